"""Training overhead of segsweep against a bare PyTorch loop, alternated in one process.

Both train the same model on the same DataModule batches for the same number of steps. segsweep
runs its real ``train()`` (Trainer + LightningModule + DataModule, default callbacks, CSV logger;
validation and test switched off since the bare loop has none); the bare loop is
``zero_grad / forward / loss / backward / step``. The two alternate so machine drift hits both,
and the figure is the median of the per-pair ratios segsweep / bare.

    python scripts/bench_overhead.py --steps 40 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

from segsweep.train import CONFIG_DIR, build_datamodule, build_task, train


def make_cfg(output_dir: str, steps: int, overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("train", return_hydra_config=True, overrides=[
            "trainer=cpu", f"+trainer.max_steps={steps}", "trainer.max_epochs=-1",
            "+trainer.limit_val_batches=0", "test=false", "logger=csv", f"paths.output_dir={output_dir}",
            *overrides,
        ])
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):  # as in the app: the job's cfg has no hydra node
        del cfg.hydra
    return cfg


def run_segsweep(cfg) -> float:
    start = time.perf_counter()
    train(cfg)
    return time.perf_counter() - start


def run_bare(cfg, steps: int) -> float:
    """The same set-up as segsweep (seed, data, model, loss, optimizer), then a plain loop."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule)
    net, criterion = task.net, task.criterion
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())
    start = time.perf_counter()
    net.train()
    done = 0
    while done < steps:
        for batch in datamodule.train_dataloader():
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(net(batch["image"]), batch["mask"])
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model=fpn")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    ratios, seg_times, bare_times = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds + 1):  # round 0 warms caches and is not counted
            cfg = make_cfg(str(Path(tmp) / f"r{round_}"), args.steps, args.overrides)
            bare = run_bare(cfg, args.steps)
            seg = run_segsweep(cfg)
            if round_ == 0:
                continue
            bare_times.append(bare)
            seg_times.append(seg)
            ratios.append(seg / bare)
            print(f"round {round_}: segsweep {seg:.2f}s  bare {bare:.2f}s  ratio {seg / bare:.3f}")
    print(f"\n{args.steps} steps x {args.rounds} rounds, overrides {args.overrides or '(defaults)'}")
    print(f"median segsweep {statistics.median(seg_times):.2f}s, bare {statistics.median(bare_times):.2f}s")
    print(f"segsweep / bare: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
