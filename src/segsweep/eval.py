"""``segsweep-eval ckpt_path=... [data=...] [split=test]``: evaluate a checkpoint on a split.

The task (architecture, classes, loss) comes from the checkpoint; the data and augmentation come
from the command line, or from the checkpoint's own run config when not given. Writes the same
metrics.json shape as ``segsweep-train``.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from segsweep.callbacks import RunSummary
from segsweep.callbacks.run_summary import to_float
from segsweep.launch import launch, needs_launch
from segsweep.tasks import load_task
from segsweep.train import CONFIG_DIR, build_datamodule, build_trainer
from segsweep.utils.run import hydra_context, run_job, write_metrics_json

SPLITS = ("val", "test")


def evaluate(cfg: DictConfig) -> dict:
    started = time.time()
    if not cfg.get("ckpt_path") or not Path(cfg.ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={cfg.get('ckpt_path')!r}: no such checkpoint file")
    if cfg.split not in SPLITS:
        raise ValueError(f"split={cfg.split!r} is not one of {list(SPLITS)}")
    L.seed_everything(cfg.seed, workers=True)
    task = load_task(cfg.ckpt_path)
    task.tta, task.tile_size = cfg.get("tta"), cfg.get("tile_size")
    trained_with = OmegaConf.create(task.hparams.run_config or {})
    data_cfg = OmegaConf.create({
        "data": cfg.data if cfg.get("data") else trained_with.get("data"),
        "augment": cfg.augment if cfg.get("augment") else trained_with.get("augment"),
    })
    if data_cfg.data is None or data_cfg.augment is None:
        raise ValueError(f"{cfg.ckpt_path} holds no data config; give data=... and augment=...")
    datamodule = build_datamodule(data_cfg)
    if datamodule.class_names != task.class_names:
        raise ValueError(
            f"the data's classes {datamodule.class_names} differ from the checkpoint's {task.class_names}"
        )
    summary = RunSummary()
    trainer = build_trainer(cfg, summary)
    run = trainer.validate if cfg.split == "val" else trainer.test
    run(task, datamodule=datamodule)
    result = {
        "status": "completed",
        "run_name": cfg.run_name,
        "ckpt_path": str(cfg.ckpt_path),
        "split": cfg.split,
        "tta": cfg.get("tta"),
        "tile_size": cfg.get("tile_size"),
        "final": {k: to_float(v) for k, v in sorted(trainer.callback_metrics.items())},
        "params": sum(p.numel() for p in task.parameters()),
        "wall_time_s": time.time() - started,
        **hydra_context(cfg),
    }
    write_metrics_json(cfg.paths.output_dir, result)
    return {**result, "value": result["final"].get(f"{cfg.split}/iou")}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> float | None:
    if needs_launch(cfg):  # DDP evaluation: this job starts its own ranks (segsweep/launch.py)
        return run_job(launch_ranks, cfg)["value"]
    return run_job(evaluate, cfg)["value"]


def launch_ranks(cfg: DictConfig) -> dict:
    result = launch(cfg, "segsweep.eval:evaluate")
    return {**result, "value": result["final"].get(f"{cfg.split}/iou")}


if __name__ == "__main__":
    main()
