"""segsweep's cost per training step against a bare PyTorch loop, paired step by step in one process.

Both train the same small model on the same DataModule batches for the same number of steps, all
in one epoch. segsweep runs its real ``train()`` (Trainer + LightningModule + DataModule, the
default callbacks and logger; validation and test off since the bare loop has none), and so does
Lightning alone (``PlainModule``: forward + loss in a Trainer without callbacks, logger or progress
bar); the bare loop is ``next(batch) / zero_grad / forward / loss / backward / step`` on its own copy of the data, model
and optimizer. A callback runs one bare step right after each Lightning step and times it apart, so
each pair runs within a few milliseconds of each other: the speed swings of these shared cores
(whole runs vary by +-50%) hit both alike. So

- **extra ms per step** = (segsweep loop - bare loop) / steps, where the segsweep loop runs from its
  first ``on_train_batch_start`` to its last ``on_train_batch_end`` less the bare steps run inside
  it: what every step pays, the figure that matters on a GPU where a step takes 10-50 ms;
- **Lightning's own loop**, the same for the plain module: the floor segsweep's hooks, callbacks
  and loggers add to (**segsweep beyond it** = the difference of the two medians);
- **fixed cost** = the rest of segsweep's ``train()`` (building data, model and Trainer, loggers,
  the last checkpoint, metrics.json), in seconds, paid once per run.

Both clocks are reported: wall time, and this process's CPU time (``time.process_time``; one torch
thread, no loader workers: all of a step's work is in this process). Figures are medians over
rounds after a warm-up round, which also renders the synthetic images once for all rounds
(``PrerenderedShapes``). ``--profile`` adds a cProfile of one segsweep run.

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

from segsweep.config import CONFIG_DIR
from segsweep.data import SyntheticShapes
from segsweep.jobs.run import run_job
from segsweep.train import build_datamodule, build_task, train

# A model whose step is short (a few ms on a GPU, tens on a CPU core), so framework costs show.
SMALL = ["trainer=cpu", "model=classic_unet", "model.base_width=4", "model.depth=2", "data.dataset.image_size=64",
         "augment.crop_size=32", "data.batch_size=4", f"data.dataset._target_={__name__}.PrerenderedShapes"]


class PrerenderedShapes(SyntheticShapes):
    """The synthetic shapes, rendered once per process and shared by every run of the benchmark.

    Rendering costs ~3 ms an image, several times the small model's step: in both loops alike, but
    its swings on shared cores drowned the difference being measured. Rendered ahead of the timed
    rounds, the data cost left is the augmentation pipeline's, the same in both loops.
    """

    shared: dict = {}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        key = (self.seed, self.size, tuple(sorted(self.render_args.items())))
        self.cache = PrerenderedShapes.shared.setdefault(key, {})


class BareLoop:
    """The same set-up as segsweep (seed, data, model, loss, optimizer), stepped by hand."""

    def __init__(self, cfg):
        L.seed_everything(cfg.seed, workers=True)
        datamodule = build_datamodule(cfg)
        task = build_task(cfg, datamodule)
        self.net, self.criterion = task.net, task.criterion
        self.optimizer = instantiate(cfg.optimizer)(params=self.net.parameters())
        self.net.train()
        self.batches = iter(datamodule.train_dataloader())

    def step(self) -> None:
        batch = next(self.batches)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.criterion(self.net(batch["image"]), batch["mask"])
        loss.backward()
        self.optimizer.step()


class StepClock(L.Callback):
    """When segsweep's first training step starts and its last one ends; runs a bare step after each."""

    latest: StepClock | None = None
    bare: BareLoop | None = None  # set before each run

    def __init__(self):
        self.first = self.last = self.first_cpu = self.last_cpu = None
        self.ends: list[float] = []  # when each step ended (bench_throughput: throughput after a warm-up)
        self.bare_wall = self.bare_cpu = 0.0  # all bare steps
        self.inside_wall = self.inside_cpu = 0.0  # the bare steps within segsweep's loop
        StepClock.latest = self

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first is None:
            self.first, self.first_cpu = time.perf_counter(), time.process_time()
        # Bare steps up to here ran between segsweep's first and last step.
        self.inside_wall, self.inside_cpu = self.bare_wall, self.bare_cpu

    @property
    def steps(self) -> int:
        return len(self.ends)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.last, self.last_cpu = time.perf_counter(), time.process_time()
        self.ends.append(self.last)
        if StepClock.bare is not None:
            StepClock.bare.step()
            self.bare_wall += time.perf_counter() - self.last
            self.bare_cpu += time.process_time() - self.last_cpu

    def segsweep_loop(self) -> tuple[float, float]:
        """(wall, CPU) seconds of segsweep's steps, the bare steps run between them taken out."""
        return self.last - self.first - self.inside_wall, self.last_cpu - self.first_cpu - self.inside_cpu


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


def run_paired(cfg) -> tuple[float, float, float, float, float]:
    """segsweep's ``train()`` with a bare step after each of its steps: (segsweep loop, its CPU
    time, bare loop, its CPU time, whole ``train()``) in seconds."""
    StepClock.bare = BareLoop(cfg)
    start = time.perf_counter()
    try:
        run_job(train, cfg)  # as segsweep-train runs it (the W&B run is finished after each run)
    finally:
        StepClock.bare = None
    total = time.perf_counter() - start
    clock = StepClock.latest
    seg_loop, seg_cpu = clock.segsweep_loop()
    return seg_loop, seg_cpu, clock.bare_wall, clock.bare_cpu, total - seg_loop - clock.bare_wall


class PlainModule(L.LightningModule):
    """The least a LightningModule is: forward + loss, one optimizer, nothing logged."""

    def __init__(self, net, criterion, optimizer_cfg):
        super().__init__()
        self.net, self.criterion, self.optimizer_cfg = net, criterion, optimizer_cfg

    def training_step(self, batch, batch_idx):
        return self.criterion(self.net(batch["image"]), batch["mask"])

    def configure_optimizers(self):
        return instantiate(self.optimizer_cfg)(params=self.net.parameters())


def run_plain_lightning(cfg, steps: int) -> tuple[float, float, float, float]:
    """Lightning's own loop: ``PlainModule`` in a Trainer with no callback, logger, progress bar or
    checkpoint, paired with bare steps like ``run_paired``: (loop, its CPU time, bare, its CPU time)."""
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule)
    StepClock.bare = BareLoop(cfg)
    clock = StepClock()
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, limit_val_batches=0, accelerator="cpu", devices=1,
                        callbacks=[clock], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    try:
        trainer.fit(PlainModule(task.net, task.criterion, cfg.optimizer), datamodule=datamodule)
    finally:
        StepClock.bare = None
    assert clock.steps == steps, f"plain Lightning ran {clock.steps} steps"
    return (*clock.segsweep_loop(), clock.bare_wall, clock.bare_cpu)


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
    lightning_ms, lightning_cpu_ms = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds + 1):  # round 0 warms caches and is not counted
            cfg = make_cfg(str(Path(tmp) / f"r{round_}"), args.steps, [*SMALL, *args.overrides])
            if round_ % 2:  # the order swapped every round, so drift hits both alike
                plain = run_plain_lightning(cfg, args.steps)
                seg_loop, seg_cpu, bare, bare_cpu, fixed = run_paired(cfg)
            else:
                seg_loop, seg_cpu, bare, bare_cpu, fixed = run_paired(cfg)
                plain = run_plain_lightning(cfg, args.steps)
            assert StepClock.latest.steps == args.steps, f"segsweep ran {StepClock.latest.steps} steps"
            if round_ == 0:
                continue
            seg_loops.append(seg_loop)
            bare_loops.append(bare)
            extra_ms.append(1000 * (seg_loop - bare) / args.steps)
            extra_cpu_ms.append(1000 * (seg_cpu - bare_cpu) / args.steps)
            fixed_s.append(fixed)
            lightning_ms.append(1000 * (plain[0] - plain[2]) / args.steps)
            lightning_cpu_ms.append(1000 * (plain[1] - plain[3]) / args.steps)
            print(f"round {round_}: loop segsweep {seg_loop:.2f}s bare {bare:.2f}s -> {extra_ms[-1]:+.2f} ms/step; "
                  f"CPU time {seg_cpu:.2f}s vs {bare_cpu:.2f}s -> {extra_cpu_ms[-1]:+.2f} ms/step; "
                  f"fixed {fixed_s[-1]:.2f}s; plain Lightning {lightning_cpu_ms[-1]:+.2f} ms/step (CPU time)")
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
    for clock, values, seg in (("wall", lightning_ms, extra_ms), ("CPU", lightning_cpu_ms, extra_cpu_ms)):
        print(f"Lightning's own loop, extra per step ({clock} time): median {statistics.median(values):+.2f} ms; "
              f"segsweep beyond it: {statistics.median(seg) - statistics.median(values):+.2f} ms")
    print(f"segsweep fixed cost per run: median {statistics.median(fixed_s):.2f} s")


if __name__ == "__main__":
    main()
