"""``segsweep-eval ckpt_path=... [data.root=<labelled folder> | data=...] [split=test] [tta=...]``.

The task (architecture, classes, loss) comes from the checkpoint, and so do the data and
augmentation settings unless the command line gives a ``data`` group. ``data.root=<folder>`` alone
keeps the checkpoint's data settings and evaluates every image of that folder. ``tta`` and
``tile_size`` build the task's ``Predictor`` (per-pixel tasks; Mask R-CNN refuses them). Writes the
same metrics.json shape as ``segsweep-train`` and returns the run's own monitored metric on the
evaluated split (``test/ap50`` for an instance checkpoint, ``test/iou`` for a binary one).
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf, open_dict

from segsweep.callbacks import RunSummary
from segsweep.callbacks.run_summary import to_float
from segsweep.config import CONFIG_DIR
from segsweep.inference import Predictor
from segsweep.jobs.ddp import launch_ranks, needs_launch
from segsweep.jobs.plan import JobPlan
from segsweep.jobs.records import hydra_context
from segsweep.jobs.run import run_job, write_metrics
from segsweep.tasks import load_task
from segsweep.train import build_datamodule, build_trainer

SPLITS = ("val", "test")


def new_folder_data(trained: DictConfig, root: str) -> DictConfig:
    """The checkpoint's data config reading every image of ``root`` in every split."""
    target = trained.dataset.get("_target_", "")
    parameters = inspect.signature(get_object(target)).parameters
    if not {"root", "split"} <= set(parameters):
        raise ValueError(
            f"data.root={root}: the checkpoint's data ({target}) is not read from a folder; "
            f"give the folder's settings with data=folder data.root=..."
        )
    data = OmegaConf.merge(trained, {"root": root})
    with open_dict(data):
        data.splits = {split: {"split": "all"} for split in ("train", *SPLITS)}
        if "stems_file" in data.dataset:
            data.dataset.stems_file = None  # the training run's list names other files
    return data


def eval_data(cfg: DictConfig, trained_with: DictConfig) -> DictConfig:
    """The ``data`` and ``augment`` configs to evaluate with: the command line's ``data`` group
    if given, else the checkpoint's own (on ``data.root`` when that alone is given)."""
    given = cfg.get("data") or {}
    trained = trained_with.get("data")
    if "_target_" in given:
        data = given
    elif trained is None:
        raise ValueError(f"{cfg.ckpt_path} holds no data config; give data=... and augment=...")
    elif given.get("root") is not None:
        data = new_folder_data(trained, given.root)
    else:
        data = trained
    augment = cfg.augment if cfg.get("augment") else trained_with.get("augment")
    if augment is None:
        raise ValueError(f"{cfg.ckpt_path} holds no augment config; give augment=...")
    return OmegaConf.create({"data": data, "augment": augment})


def evaluated_metric(trained_with: DictConfig, split: str) -> str | None:
    """The training run's monitored metric on ``split`` (``val/ap50`` -> ``test/ap50``)."""
    monitored = trained_with.get("optimized_metric")
    return f"{split}/{monitored.split('/', 1)[1]}" if monitored and "/" in monitored else None


def evaluate(cfg: DictConfig, plan: JobPlan | None = None) -> dict:
    started = time.time()
    if not cfg.get("ckpt_path") or not Path(cfg.ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={cfg.get('ckpt_path')!r}: no such checkpoint file")
    if cfg.split not in SPLITS:
        raise ValueError(f"split={cfg.split!r} is not one of {list(SPLITS)}")
    L.seed_everything(cfg.seed, workers=True)
    predictor = Predictor.from_config(cfg)
    task = load_task(cfg.ckpt_path, predictor=predictor)
    trained_with = OmegaConf.create(task.hparams.run_config or {})
    datamodule = build_datamodule(eval_data(cfg, trained_with))
    if datamodule.class_names != task.class_names:
        raise ValueError(
            f"the data's classes {datamodule.class_names} differ from the checkpoint's {task.class_names}"
        )
    trainer = build_trainer(cfg, RunSummary(), run_id=plan.run_id if plan else None)
    run = trainer.validate if cfg.split == "val" else trainer.test
    run(task, datamodule=datamodule)
    result = {
        "status": "completed",
        "run_name": cfg.run_name,
        "ckpt_path": str(cfg.ckpt_path),
        "split": cfg.split,
        "monitor": evaluated_metric(trained_with, cfg.split),
        "monitor_mode": trained_with.get("monitor_mode"),
        **predictor.options(),
        "final": {k: to_float(v) for k, v in sorted(trainer.callback_metrics.items())},
        "params": sum(p.numel() for p in task.parameters()),
        "wall_time_s": time.time() - started,
        **hydra_context(cfg),
    }
    write_metrics(cfg.paths.output_dir, result)
    return {**result, "value": result["final"].get(result["monitor"])}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> float | None:
    if needs_launch(cfg):  # DDP evaluation: this job starts its own ranks (segsweep/jobs/ddp.py)
        return run_job(evaluate_on_ranks, cfg)["value"]
    return run_job(evaluate, cfg)["value"]


def evaluate_on_ranks(cfg: DictConfig, plan: JobPlan) -> dict:
    result = launch_ranks(cfg, "segsweep.eval:evaluate", plan)
    return {**result, "value": result["final"].get(result.get("monitor"))}


if __name__ == "__main__":
    main()
