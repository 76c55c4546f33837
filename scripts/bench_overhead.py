"""segsweep's cost per training step against a bare PyTorch loop, alternated in one process.

Both train the same small model on the same DataModule batches for the same number of steps, all
in one epoch. segsweep runs its real ``train()`` (Trainer + LightningModule + DataModule, the
default callbacks and logger; validation and test off since the bare loop has none); the bare loop
is ``zero_grad / forward / loss / backward / step``. Each run's loop is timed from the start of its
first step to the end of its last (segsweep: a callback's first ``on_train_batch_start`` to its last
``on_train_batch_end``), so

- **extra ms per step** = (segsweep loop - bare loop) / steps: what every step pays, the figure that
  matters on a GPU where a step takes 10-50 ms;
- **fixed cost** = the rest of segsweep's ``train()`` (building data, model and Trainer, loggers,
  the last checkpoint, metrics.json), in seconds, paid once per run.

Both clocks are reported: wall time, and this process's CPU time (``time.process_time``), which
other processes on shared cores disturb far less (one torch thread, no loader workers: all of a
step's work is in this process). The two alternate (order swapped every round) so machine drift
hits both; figures are medians over rounds after a warm-up round. ``--profile`` adds a cProfile
of one segsweep run.

    python scripts/bench_overhead.py --steps 200 --rounds 5
    python scripts/bench_overhead.py --steps 200 --rounds 1 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from segsweep.train import CONFIG_DIR, build_datamodule, build_task, train
from segsweep.utils.run import run_job

# A model whose step is short (a few ms on a GPU, tens on a CPU core), so framework costs show.
SMALL = ["trainer=cpu", "model=classic_unet", "model.base_width=4", "model.depth=2", "data.dataset.image_size=64",
         "augment.crop_size=32", "data.batch_size=4"]


class StepClock(L.Callback):
    """When segsweep's first training step starts and its last one ends."""

    latest: StepClock | None = None

    def __init__(self):
        self.first = self.last = self.first_cpu = self.last_cpu = None
        self.ends: list[float] = []  # when each step ended (throughput after a warm-up)
        StepClock.latest = self

    @property
    def steps(self) -> int:
        return len(self.ends)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first is None:
            self.first, self.first_cpu = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.last, self.last_cpu = time.perf_counter(), time.process_time()
        self.ends.append(self.last)


def make_cfg(output_dir: str, steps: int, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("train", return_hydra_config=True, overrides=[
            f"+trainer.max_steps={steps}", "trainer.max_epochs=-1", "+trainer.limit_val_batches=0",
            "test=false", f"paths.output_dir={output_dir}", *overrides,
        ])
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):  # as in the app: the job's cfg has no hydra node
        del cfg.hydra
        # All steps in one epoch, as in a real run where epochs are long against the step
        # (generated data; a folder dataset has the images it has).
        if OmegaConf.select(cfg, "data.splits.train.num_images") is not None:
            cfg.data.splits.train.num_images = max(cfg.data.splits.train.num_images, steps * cfg.data.batch_size)
        cfg.callbacks = {**(cfg.callbacks or {}), "step_clock": {"_target_": f"{__name__}.StepClock"}}
    return cfg


def run_segsweep(cfg) -> tuple[float, float, float]:
    """(loop seconds, loop CPU seconds, whole ``train()`` seconds)."""
    start = time.perf_counter()
    run_job(train, cfg)  # as segsweep-train runs it (the W&B run is finished after each run)
    total = time.perf_counter() - start
    clock = StepClock.latest
    return clock.last - clock.first, clock.last_cpu - clock.first_cpu, total


def run_bare(cfg, steps: int) -> tuple[float, float]:
    """The same set-up as segsweep (seed, data, model, loss, optimizer), then a plain loop."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule)
    net, criterion = task.net, task.criterion
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())
    net.train()
    start, start_cpu, done = None, None, 0
    for batch in datamodule.train_dataloader():
        if start is None:  # from the first step's start, as segsweep's clock
            start, start_cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(net(batch["image"]), batch["mask"])
        loss.backward()
        optimizer.step()
        done += 1
        if done == steps:
            break
    return time.perf_counter() - start, time.process_time() - start_cpu


def profile_segsweep(cfg, top: int = 25) -> str:
    """cProfile of one segsweep ``train()``: functions by their own time, then by cumulative time."""
    profiler = cProfile.Profile()
    profiler.runcall(train, cfg)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="also profile one segsweep run")
    # One thread by default: on shared cores a second OpenMP thread that gets preempted made
    # steps 5-20x slower and the figures noise.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. logger=csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "offline")  # the default logger, without the network
    os.environ.setdefault("WANDB_SILENT", "true")
    extra_ms, extra_cpu_ms, fixed_s, seg_loops, bare_loops = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds + 1):  # round 0 warms caches and is not counted
            cfg = make_cfg(str(Path(tmp) / f"r{round_}"), args.steps, [*SMALL, *args.overrides])
            if round_ % 2:
                seg_loop, seg_cpu, seg_total = run_segsweep(cfg)
                bare, bare_cpu = run_bare(cfg, args.steps)
            else:
                bare, bare_cpu = run_bare(cfg, args.steps)
                seg_loop, seg_cpu, seg_total = run_segsweep(cfg)
            assert StepClock.latest.steps == args.steps, f"segsweep ran {StepClock.latest.steps} steps"
            if round_ == 0:
                continue
            seg_loops.append(seg_loop)
            bare_loops.append(bare)
            extra_ms.append(1000 * (seg_loop - bare) / args.steps)
            extra_cpu_ms.append(1000 * (seg_cpu - bare_cpu) / args.steps)
            fixed_s.append(seg_total - seg_loop)
            print(f"round {round_}: loop segsweep {seg_loop:.2f}s bare {bare:.2f}s -> {extra_ms[-1]:+.2f} ms/step; "
                  f"CPU time {seg_cpu:.2f}s vs {bare_cpu:.2f}s -> {extra_cpu_ms[-1]:+.2f} ms/step; "
                  f"fixed {fixed_s[-1]:.2f}s")
        if args.profile:
            print(profile_segsweep(make_cfg(str(Path(tmp) / "profile"), args.steps, [*SMALL, *args.overrides])))
    step_ms = 1000 * statistics.median(bare_loops) / args.steps
    print(f"\n{args.steps} steps x {args.rounds} rounds, overrides {args.overrides or '(defaults)'}, "
          f"{torch.get_num_threads()} threads")
    print(f"bare step: {step_ms:.1f} ms (median); segsweep loop / bare loop: "
          f"{statistics.median(seg_loops) / statistics.median(bare_loops):.3f}")
    for clock, values in (("wall", extra_ms), ("CPU", extra_cpu_ms)):
        print(f"segsweep extra per step ({clock} time): median {statistics.median(values):+.2f} ms "
              f"(min {min(values):+.2f}, max {max(values):+.2f})")
    print(f"segsweep fixed cost per run: median {statistics.median(fixed_s):.2f} s")


if __name__ == "__main__":
    main()
