"""Every GPU figure the docs ask for, in one command, under 8 minutes on one GPU.

    bash scripts/gpu_check.sh                      # the GPU machine: wheels from .whl/, then the line below
    python scripts/gpu_check.py --out outputs/gpu_check.json --budget 420
    python scripts/gpu_check.py --dry-run          # CPU, tiny sizes, about a minute (tests/test_gpu_check.py)
    python scripts/gpu_check.py --table outputs/gpu_check.json   # the table of an earlier (or killed) run

Parts, in this order, each in its own time budget (one that overruns or raises has its error in its row
and the next one runs; the JSON is rewritten after each part; the table is printed last):

- ``model:<name>``: U-Net with a ResNet-34 encoder (no pretrained weights) and segsweep's default
  ``classic_unet``, 512x512, batch 16, fixed tensors on the GPU: median whole training step (forward,
  loss, backward, AdamW step; bf16 autocast, channels-last; CUDA events), images/s, FLOPs of a step
  (``FlopCounterMode``), TFLOP/s and share of the dense bf16 peak, peak memory. ``+compile``: the same
  after ``net.compile()`` (``callbacks.speed.compile``), compile time apart (the first steps' extra time).
- ``unet3d``: ``classic_unet3d`` as configured (depth 3, width 8, batch 2) on 64^3 patches, channels_last_3d.
- ``data``: the ``augment=default`` training pipeline (512 crops of 640x640 synthetic images, rendered
  beforehand as a run caches them) through the DataModule's loader at 1, 2, 4, 8 workers and at the
  count ``trainer=gpu`` configures: images/s, per worker, and against what the models consume.
- ``overhead``: segsweep's real ``train()`` (trainer=gpu, default callbacks, logger=csv, validation off)
  on U-Net-R34 at the batch of a ~20 ms step against a bare loop on the same data, model and optimizer,
  paired step by step (``bench_overhead.StepClock``, synchronised at each step's ends); first the
  host-device synchronisations per step of the run (``torch.cuda.set_sync_debug_mode``) and their lines.
- ``multi_gpu``: with 2+ GPUs, a 2-job sweep on ``hydra/launcher=gpus`` and a 2-GPU DDP job, wall times;
  the dry run simulates both on CPU (GPU ids for the launcher, ``trainer=ddp_cpu``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts
from bench_overhead import PrerenderedShapes, StepClock, make_cfg  # noqa: E402
from bench_throughput import BF16_PEAK_TFLOPS  # noqa: E402

from segsweep.callbacks.run_summary import peak_memory_mb, reset_peak_memory  # noqa: E402
from segsweep.callbacks.speed import to_channels_last  # noqa: E402
from segsweep.data.datamodule import seed_worker  # noqa: E402
from segsweep.data.preprocess import finish_batch
from segsweep.jobs.run import run_job  # noqa: E402
from segsweep.train import build_datamodule, build_task, train  # noqa: E402

MODELS = {"unet_r34": ["model=unet", "encoder=resnet34", "encoder.weights=null"],
          "classic_unet": ["model=classic_unet"], "unet3d": ["experiment=synthetic3d"]}
# "H100 80GB HBM3" is the SXM card (989); bench_throughput's "H100" fragment alone gives it the PCIe peak.
PEAKS = {"H100 80GB HBM3": 989.0, "GH200": 989.0, **BF16_PEAK_TFLOPS}
GPU = dict(size=512, batch=16, data_image=640, warmup=8, steps=30, volume=64, workers=[1, 2, 4, 8], pool=64,
           overhead=(5, 20, 100), budget=420, min_seconds=2.0,
           budgets={"model": 50, "compile": 180, "unet3d": 40, "data": 60, "overhead": 120, "multi_gpu": 240})
DRY = dict(size=64, batch=2, data_image=80, warmup=1, steps=3, volume=16, workers=[1, 2], pool=4,
           overhead=(2, 5, 3), budget=240, min_seconds=0.5,
           budgets={"model": 20, "compile": 40, "unet3d": 15, "data": 20, "overhead": 40, "multi_gpu": 160})


class OverBudget(Exception):
    pass


class PooledShapes(PrerenderedShapes):
    """The synthetic shapes with ``POOL`` distinct images (image i is image i % POOL), rendered in this
    process before the loaders fork their workers: the data cost left is the augmentation pipeline's, as
    in a run whose renders are cached. ``FROZEN`` (the overhead part): each pool image also augmented
    once and kept, so loading, collating, pinning and copying stay and neither loop waits for workers."""

    POOL, FROZEN = 64, False
    frozen: dict = {}

    def load(self, index: int):
        return super().load(index % self.POOL)

    def __getitem__(self, key):
        if not self.FROZEN:
            return super().__getitem__(key)
        index = (key[0] if isinstance(key, tuple) else key) % self.POOL
        if (self.seed, self.size, index) not in self.frozen:
            self.frozen[self.seed, self.size, index] = super().__getitem__(index)
        return self.frozen[self.seed, self.size, index]


def prerender(dataset: PooledShapes) -> float:
    """Render (``FROZEN``: and augment) the pool now, before workers fork; ms per image rendered."""
    pool = range(min(dataset.POOL, len(dataset)))
    todo, start = [i for i in pool if i not in dataset.cache], time.perf_counter()
    for i in todo:
        dataset.load(i)
    seconds = time.perf_counter() - start
    for i in pool if dataset.FROZEN else ():
        dataset[i]
    return 1000 * seconds / max(len(todo), 1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def short(filename: str) -> str:
    for marker in ("site-packages/", "/tmp/site/", "/src/", "/scripts/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


class SyncCounter:
    """Host-device synchronisations: the warnings of ``torch.cuda.set_sync_debug_mode("warn")``,
    per step (``mark`` at each step's start) and by site: the innermost frame outside torch."""

    def __init__(self, cuda: bool):
        self.cuda, self.count, self.per_step, self._marked, self._catch = cuda, 0, [], 0, None
        self.sites, self.stacks = Counter(), {}

    def start(self) -> None:
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("always")
        warnings.showwarning = self._record
        if self.cuda:
            torch.cuda.set_sync_debug_mode("warn")

    def mark(self) -> None:
        self.per_step.append(self.count - self._marked)
        self._marked = self.count

    def stop(self) -> None:  # idempotent: also the clean-up of a part stopped while counting
        if self._catch is not None:
            if self.cuda:
                torch.cuda.set_sync_debug_mode(0)
            self._catch.__exit__(None, None, None)
            self._catch = None

    def _record(self, message, category, filename, lineno, file=None, line=None) -> None:
        if "synchroniz" not in str(message):
            return
        self.count += 1
        frames = [f"{short(f.filename)}:{f.lineno} {f.name}" for f in traceback.extract_stack()[:-1]
                  if not f.filename.endswith("warnings.py")]
        site = next((f for f in reversed(frames) if not f.startswith("torch/")), frames[-1])
        self.sites[site] += 1
        self.stacks.setdefault(site, frames[-10:])

    def summary(self) -> dict:
        return {"syncs_per_step": sum(self.per_step) / max(len(self.per_step), 1), "syncs_by_step": self.per_step,
                "sync_sites": {s: {"count": n, "stack": self.stacks[s]} for s, n in self.sites.most_common(5)}}


def timed_steps(step, count: int, deadline: float, device: torch.device) -> list[float]:
    """Milliseconds of each of up to ``count`` steps, fewer if ``deadline`` passes (at least one).
    On a GPU by CUDA events, so the host queues steps ahead as in training."""
    times = []
    for _ in range(count):
        if times and time.monotonic() > deadline:
            break
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(), step(), end.record()
            times.append((start, end))
        else:
            start = time.perf_counter()
            step()
            times.append(1000 * (time.perf_counter() - start))
    sync(device)
    return [s.elapsed_time(e) for s, e in times] if device.type == "cuda" else times


def step_figures(ctx, cfg, task, images, masks, deadline: float, compiled: bool = False) -> dict:
    """Whole training steps of ``task.net`` on fixed tensors: median step, images/s, FLOPs, TFLOP/s and
    share of the bf16 peak, peak memory; with ``compiled``, the compile time."""
    device, batch, warmup = ctx.device, images.shape[0], ctx.s["warmup"] + (2 if compiled else 0)
    start_mb = reset_peak_memory(device)
    net, criterion = to_channels_last(task.to(device).net).train(), task.criterion  # as callbacks.speed
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx.cuda):
            loss = criterion(net(images), masks)
        loss.backward()
        optimizer.step()

    torch.backends.cudnn.benchmark = ctx.cuda  # as callbacks.speed in training
    with FlopCounterMode(display=False) as counter:  # eager: the compiled net does the same math
        step()
    row = {"batch": batch, "input": list(images.shape[1:]), "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
           "tflop_per_step": counter.get_total_flops() / 1e12}
    if compiled:
        torch._dynamo.reset()
        net.compile(**ctx.compile_options)
    first = time.perf_counter()
    for _ in range(warmup):  # cuDNN autotuning; compilation
        step()
        if time.monotonic() > deadline:
            raise OverBudget(f"still warming up{' (compiling)' if compiled else ''} at the part's budget")
    sync(device)
    warm_s = time.perf_counter() - first
    times = timed_steps(step, ctx.s["steps"], deadline, device)
    step_ms = statistics.median(times)
    row.update(step_ms=step_ms, images_s=1000 * batch / step_ms, timed_steps=len(times), start_memory_mb=start_mb,
               tflops=row["tflop_per_step"] / (step_ms / 1000), peak_memory_mb=peak_memory_mb(device))
    if ctx.peak:
        row["peak_share"] = row["tflops"] / ctx.peak
    if compiled:
        row["compile_s"] = warm_s - warmup * step_ms / 1000
    if len(times) < ctx.s["steps"]:
        row["status"] = f"partial: {len(times)} of {ctx.s['steps']} timed steps in the budget"
    return row


def part_model(ctx, deadline: float, name: str, compiled: bool = False) -> dict:
    """``step_figures`` of a model of ``MODELS`` on random images (``unet3d``: volumes) and masks."""
    volume = name == "unet3d"  # classic_unet3d as configured, at its data's batch
    cfg = ctx.cfg(MODELS[name], base=not volume)
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule)
    batch, sides = cfg.data.batch_size, (ctx.s["volume"],) * 3 if volume else (ctx.s["size"],) * 2
    images = torch.randn(batch, datamodule.in_channels, *sides, device=ctx.device)
    masks = torch.randint(0, len(datamodule.class_names), (batch, *sides), device=ctx.device)
    row = step_figures(ctx, cfg, task, images, masks, deadline, compiled)
    if volume:  # trainer=gpu's conversion (callbacks.speed) of 3D weights
        row["channels_last_3d"] = all(p.is_contiguous(memory_format=torch.channels_last_3d)
                                      for p in task.net.parameters() if p.dim() == 5)
    return row


def part_data(ctx, deadline: float) -> dict:
    cfg = ctx.cfg([], steps=10_000, image=ctx.s["data_image"])
    datamodule = build_datamodule(cfg)
    datamodule.trainer = instantiate(cfg.trainer, callbacks=[], logger=False)  # the loader options of a run here
    options = datamodule.loader_options()
    row = {"configured_workers": options["num_workers"], "image": ctx.s["data_image"], "crop": ctx.s["size"],
           "render_ms": prerender(datamodule.build("train")), "workers": {}}
    for workers in sorted({*ctx.s["workers"], options["num_workers"]} - {0}):
        datamodule.loader_options = lambda w=workers: {**options, "num_workers": w, "persistent_workers": True,
                                                       "worker_init_fn": seed_worker}
        batches, done, start, images = iter(datamodule.train_dataloader()), 0, None, 0
        for batch in batches:  # untimed: the first 2 batches per worker (the workers' start)
            done += 1
            if done == 2 * workers:
                start = time.perf_counter()
            elif start:
                images += batch["image"].shape[0]
                if time.monotonic() > deadline or (time.perf_counter() - start > ctx.s["min_seconds"]
                                                   and done > 5 * workers):
                    break
        if not images:
            raise OverBudget(f"{workers} workers delivered no timed batch in the budget")
        rate = images / (time.perf_counter() - start)
        row["workers"][workers] = {"images_s": rate, "per_worker": rate / workers}
        del batches
        if time.monotonic() > deadline:
            row["status"] = f"partial: budget reached after {workers} workers"
            break
    row.update(row["workers"].get(options["num_workers"]) or row["workers"][max(row["workers"])])
    return row


class BareLoop:
    """The same data, model, loss and optimizer as segsweep's run, stepped by hand on this device with the
    trainer's settings (channels-last, bf16 autocast) and the loader options a run gets here."""

    def __init__(self, cfg, device: torch.device):
        L.seed_everything(cfg.seed, workers=True)
        datamodule = build_datamodule(cfg)
        datamodule.trainer = instantiate(cfg.trainer, callbacks=[], logger=False)
        prerender(datamodule.build("train"))  # before any worker forks: all of them share it
        task = build_task(cfg, datamodule)
        self.net, self.criterion, self.device = to_channels_last(task.to(device).net).train(), task.criterion, device
        self.optimizer = instantiate(cfg.optimizer)(params=self.net.parameters())
        self.bf16 = "bf16" in str(cfg.trainer.precision)
        self.batches = iter(datamodule.train_dataloader())

    def step(self, synchronize: bool = True) -> None:
        batch = next(self.batches)  # moved and finished as a run's are (compact uint8 batches on a GPU)
        batch = finish_batch({k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                              for k, v in batch.items()})
        images, masks = batch["image"], batch["mask"]
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.criterion(self.net(images), masks)
        loss.backward()
        self.optimizer.step()
        if synchronize:
            sync(self.device)


class PhasedClock(StepClock):
    """bench_overhead's StepClock over one segsweep run in three phases: ``warmup`` steps, each followed by
    an untimed bare step; ``count`` steps counting syncs as a real run makes them (no bare step, no explicit
    sync); then steps timed in pairs with a bare step, synchronised at each step's ends."""

    warmup = count = 0
    counter: SyncCounter | None = None
    device = torch.device("cpu")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        end = self.warmup + self.count
        if batch_idx == self.warmup:
            self.counter.start()
        if self.warmup < batch_idx <= end:
            self.counter.mark()
        if batch_idx == end:
            self.counter.stop()
        if batch_idx >= end:
            sync(self.device)
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx < self.warmup:
            StepClock.bare.step()
        elif batch_idx >= self.warmup + self.count:
            sync(self.device)
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def part_overhead(ctx, deadline: float) -> dict:
    warmup, count, timed = ctx.s["overhead"]
    batch, measured = ctx.s["batch"], ctx.results.get("model:unet_r34", {}).get("step_ms")
    if ctx.cuda and measured:  # the batch of a ~20 ms step (the docs' goal: a 20 ms step loses < 5%)
        batch = max(4, min(32, 4 * round(batch * 20 / measured / 4)))  # <= 32: pinning keeps up
    PhasedClock.warmup, PhasedClock.count, PhasedClock.device = warmup, count, ctx.device
    PhasedClock.counter, bare_counter = SyncCounter(ctx.cuda), SyncCounter(ctx.cuda)
    PooledShapes.FROZEN = True  # read when the loaders fork their workers
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = ctx.cfg([*MODELS["unet_r34"], f"data.batch_size={batch}"], warmup + count + timed, tmp)
            cfg.callbacks.step_clock._target_ = f"{__name__}.PhasedClock"
            bare = StepClock.bare = BareLoop(cfg, ctx.device)
            run_job(train, cfg)
            StepClock.bare = None
            bare_counter.start()  # the bare loop's own syncs (model, loss): the floor of segsweep's
            for _ in range(count):
                bare.step(synchronize=False)
                bare_counter.mark()
            bare_counter.stop()
            sync(ctx.device)
    finally:
        StepClock.bare, PooledShapes.FROZEN = None, False
        PhasedClock.counter.stop()
        bare_counter.stop()
    clock = StepClock.latest
    assert clock.steps == timed, f"segsweep ran {clock.steps} timed steps, not {timed}"
    row = {"model": "unet_r34", "batch": batch, "size": ctx.s["size"], "timed_steps": timed,
           "bare_step_ms": 1000 * clock.bare_wall / timed, "segsweep_step_ms": 1000 * clock.segsweep_loop()[0] / timed,
           **PhasedClock.counter.summary(), "bare_syncs_per_step": bare_counter.summary()["syncs_per_step"],
           "log_every_n_steps": cfg.trainer.log_every_n_steps}
    row["extra_ms"] = row["segsweep_step_ms"] - row["bare_step_ms"]
    row["extra_pct"] = 100 * row["extra_ms"] / row["bare_step_ms"]
    row["extra_pct_of_20ms"] = 100 * row["extra_ms"] / 20
    return row


def part_multi_gpu(ctx, deadline: float) -> dict:
    """A 2-job ``hydra/launcher=gpus`` sweep, then a 2-GPU DDP job (the dry run: both at once, on CPU)."""
    gpus = torch.cuda.device_count() if ctx.cuda else 0
    if ctx.cuda and gpus < 2:
        return {"status": f"skipped: {gpus} GPU visible, needs 2", "gpus": gpus}
    small = ["logger=csv", "trainer.max_epochs=2", "test=false", "encoder=resnet34"]
    if not ctx.cuda:  # simulated: GPU ids for the launcher, gloo ranks for DDP; tiny data
        small = ["logger=none", "callbacks=none", "trainer.max_epochs=1", "test=false", "data.dataset.image_size=64",
                 "data.splits.train.num_images=8", "data.splits.val.num_images=4", "data.batch_size=4",
                 "augment.crop_size=64", "encoder=tu-mobilenetv3_small_050"]
    row = {"gpus": gpus, "epochs": 2 if ctx.cuda else 1}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"sweep": ["-m", "hydra/launcher=gpus", "model=classic_unet,unet", f"hydra.sweep.dir={tmp}/sweep",
                          *(["trainer=gpu"] if ctx.cuda else ["trainer=cpu", "hydra.launcher.devices=[0,1]"])],
                "ddp": ["model=unet", "trainer=ddp" if ctx.cuda else "trainer=ddp_cpu", "trainer.devices=2",
                        f"hydra.run.dir={tmp}/ddp"]}

        def launch(name: str) -> tuple[subprocess.Popen, float]:
            with open(f"{tmp}/{name}.log", "w") as log:
                return subprocess.Popen([sys.executable, "-m", "segsweep.train", *runs[name], *small], stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True), time.perf_counter()

        for group in ([["sweep"], ["ddp"]] if ctx.cuda else [["sweep", "ddp"]]):
            running = {name: launch(name) for name in group}
            try:
                while running:
                    for name, (proc, started) in list(running.items()):
                        if proc.poll() is None:
                            continue
                        del running[name]
                        row[f"{name}_s"] = time.perf_counter() - started
                        jobs = row[f"{name}_jobs"] = [json.loads(p.read_text()).get("status")
                                                      for p in sorted((Path(tmp) / name).rglob("metrics.json"))]
                        if proc.returncode or jobs.count("completed") != (2 if name == "sweep" else 1):
                            log = Path(f"{tmp}/{name}.log").read_text()[-800:]
                            raise RuntimeError(f"{name}: exit {proc.returncode}, jobs {jobs}: {log}")
                    if running and time.monotonic() > deadline:
                        raise OverBudget(f"{sorted(running)} still running at the part's budget")
                    time.sleep(0.2)
            finally:  # whatever stopped the part: no job left behind on the GPUs
                for proc, _ in running.values():
                    os.killpg(proc.pid, signal.SIGKILL)
    return row


class Context:
    """This run's device, sizes and budgets; ``cfg`` composes a train config as the app does."""

    def __init__(self, args):
        self.results, self.cuda = {}, torch.cuda.is_available() and not args.dry_run
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.s = DRY if args.dry_run else GPU
        self.compile_options = {} if self.cuda else {"backend": "eager"}  # CPU: Dynamo only, no Inductor
        if args.dry_run:  # shared cores: a preempted second OpenMP thread makes small steps 5-20x slower
            torch.set_num_threads(1)
        name = torch.cuda.get_device_name() if self.cuda else "cpu"
        self.peak = next((p for fragment, p in PEAKS.items() if fragment in name), None) if self.cuda else None
        PooledShapes.POOL = self.s["pool"]
        self.meta = {"device": name, "bf16_peak_tflops": self.peak, "gpus": torch.cuda.device_count() * self.cuda,
                     "torch": torch.__version__, "cuda": torch.version.cuda, "lightning": L.__version__,
                     "cpus": len(os.sched_getaffinity(0)), "dry_run": args.dry_run, "size": self.s["size"],
                     "batch": self.s["batch"], "budget_s": args.budget or self.s["budget"], "command": sys.argv}

    def cfg(self, overrides: list[str], steps: int = 1, output_dir: str = "unused", image: int | None = None,
            base: bool = True):
        """``trainer=gpu`` (dry run: ``cpu``), ``logger=csv``, ``overrides``; ``base``: pooled 2D synthetic
        images of ``image`` px (default: the crop size), this run's crop size and batch."""
        size = self.s["size"]
        common = [f"augment.crop_size={size}", f"data.dataset.image_size={image or size}",
                  f"data.batch_size={self.s['batch']}", f"data.dataset._target_={__name__}.PooledShapes"]
        trainer = "trainer=gpu" if self.cuda else "trainer=cpu"
        return make_cfg(output_dir, steps, [trainer, "logger=csv", *(common if base else []), *overrides])


def hard_stop(signum, frame):
    raise OverBudget("stopped at its hard time limit (its budget + 30 s, at most the run's end)")


def run_part(ctx, report: dict, out: Path, deadline: float, name: str, budget: float, fn, *args) -> None:
    """``fn`` in ``budget`` seconds (its loops stop at this soft deadline; SIGALRM stops it 30 s later at
    the latest); its row, or its error, into the report, written at once."""
    left, start = deadline - time.monotonic(), time.monotonic()
    if left < 15:
        row = {"status": f"skipped: {left:.0f} s left of the run's budget"}
    else:
        budget = min(budget, left - 10)
        signal.signal(signal.SIGALRM, hard_stop)
        signal.setitimer(signal.ITIMER_REAL, min(budget + 30, left - 2))
        try:
            row = {"status": "ok", **fn(ctx, start + budget, *args)}
        except Exception as err:  # a part's failure is its row; the run goes on
            row = {"status": f"error: {type(err).__name__}: {str(err)[:400]}",
                   "traceback": traceback.format_exc()[-4000:]}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        gc.collect()
        if ctx.cuda:
            torch.cuda.empty_cache()
    row["seconds"] = time.monotonic() - start
    report["parts"][name] = row
    out.with_suffix(".tmp").write_text(json.dumps(report, indent=1, default=str))
    out.with_suffix(".tmp").replace(out)
    print(f"[gpu_check] {name}: {row['status']} ({row['seconds']:.0f} s)", flush=True)


def fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def describe(name: str, row: dict, parts: dict) -> str:
    """One part's figures in a line or two."""
    if not row["status"].startswith(("ok", "partial")):
        return row["status"]
    if name.startswith(("model:", "unet3d")):
        share = f"{100 * row['peak_share']:.1f}% of peak" if "peak_share" in row else "unknown peak"
        return (f"b{row['batch']} {'x'.join(map(str, row['input']))}: step {row['step_ms']:.2f} ms, "
                f"{row['images_s']:.1f} img/s, {row['tflop_per_step']:.3f} TFLOP/step = {row['tflops']:.1f} TFLOP/s "
                f"({share}), peak mem {row['peak_memory_mb'] / 1024:.2f} GiB"
                + (f", compile {row['compile_s']:.1f} s" if "compile_s" in row else ""))
    if name == "data":
        best: dict[str, float] = {}  # each model's faster variant (eager or compiled)
        for part, r in parts.items():
            if part.startswith("model:") and "images_s" in r:
                model = part[6:].split("+")[0]
                best[model] = max(best.get(model, 0.0), r["images_s"])
        return (f"{row['crop']} crops of {row['image']} px: {row['images_s']:.0f} img/s at the configured "
                f"{row['configured_workers']} workers ({row['per_worker']:.0f}/worker) ["
                + ", ".join(f"{w} workers {r['images_s']:.0f}" for w, r in row["workers"].items())
                + f"]; render {row['render_ms']:.1f} ms/img (cached after epoch 1); data/model (goal >= 2x): "
                + (", ".join(f"{m} {row['images_s'] / r:.2f}x" for m, r in best.items()) or "-"))
    if name == "overhead":
        sites = "; ".join(f"{n['count']}x {s}" for s, n in row["sync_sites"].items()) or "none"
        return (f"U-Net-R34 b{row['batch']}: bare step {row['bare_step_ms']:.2f} ms, segsweep "
                f"{row['segsweep_step_ms']:.2f} ms: extra {row['extra_ms']:+.2f} ms/step ({row['extra_pct']:+.1f}%; "
                f"{row['extra_pct_of_20ms']:+.1f}% of a 20 ms step; goal < 5%)\n{'':34}syncs/step "
                f"{row['syncs_per_step']:.2f} (by step {row['syncs_by_step']}, logging every "
                f"{row['log_every_n_steps']}; "
                f"bare loop {row['bare_syncs_per_step']:.2f}; goal 0) at: {sites}")
    if name == "multi_gpu":
        ranks = "GPUs" if row["gpus"] else "CPU ranks (simulated, at once with the sweep)"
        return (f"2-job sweep (hydra/launcher=gpus) {row['sweep_s']:.1f} s {row['sweep_jobs']}; "
                f"DDP job on 2 {ranks} {row['ddp_s']:.1f} s")
    return json.dumps({k: v for k, v in row.items() if k not in ("status", "seconds")})[:200]


def table(report: dict) -> str:
    meta, parts = report["meta"], report["parts"]
    lines = [f"segsweep GPU check: {meta['device']} (dense bf16 peak {fmt(meta['bf16_peak_tflops'], '.0f')} "
             f"TFLOP/s), torch {meta['torch']}, CUDA {meta['cuda']}, {meta['cpus']} CPUs, {meta['gpus']} GPUs; "
             f"{meta['size']} px, batch {meta['batch']}" + (" [DRY RUN: CPU, tiny sizes]" if meta["dry_run"] else ""),
             f"{'part':<27}{'secs':>5}  figures"]
    for name, row in parts.items():
        try:
            text = describe(name, row, parts)
        except Exception as err:  # a row the table cannot read must not hide the others
            text = f"(unreadable row: {err!r})"
        note = f" [{row['status']}]" if row["status"].startswith("partial") else ""
        lines.append(f"{name:<27}{fmt(row.get('seconds'), '.0f'):>5}  {text}{note}")
    lines.append(f"total {fmt(report.get('total_s'), '.0f')} s; JSON: {report['out']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    out = Path(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else Path("outputs/gpu_check.json")
    parser.add_argument("--out", type=Path, default=out, help=f"the JSON report (default {out})")
    parser.add_argument("--dry-run", action="store_true", help="every part on CPU at tiny sizes")
    parser.add_argument("--budget", type=float, help="seconds for all parts (default 420; dry run 240)")
    parser.add_argument("--parts", help="comma-separated parts to run, e.g. overhead,model (default: all)")
    parser.add_argument("--table", type=Path, help="print the table of this JSON report and exit")
    args = parser.parse_args()
    if args.table:
        return print(table(json.loads(args.table.read_text())))
    ctx, start = Context(args), time.monotonic()
    deadline = start + (args.budget or ctx.s["budget"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report, budgets = {"meta": ctx.meta, "parts": ctx.results, "out": str(args.out)}, ctx.s["budgets"]
    plan = [("model:unet_r34", budgets["model"], part_model, "unet_r34"),
            ("model:classic_unet", budgets["model"], part_model, "classic_unet"),
            ("unet3d", budgets["unet3d"], part_model, "unet3d"), ("data", budgets["data"], part_data),
            ("overhead", budgets["overhead"], part_overhead),
            ("model:unet_r34+compile", budgets["compile"], part_model, "unet_r34", True),
            ("model:classic_unet+compile", budgets["compile"], part_model, "classic_unet", True),
            ("multi_gpu", budgets["multi_gpu"], part_multi_gpu)]
    wanted = set(args.parts.split(",")) if args.parts else None
    for name, budget, fn, *fn_args in plan:
        if wanted is None or name in wanted or name.split(":")[0] in wanted:
            run_part(ctx, report, args.out, deadline, name, budget, fn, *fn_args)
    report["total_s"] = time.monotonic() - start
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print("\n" + table(report), flush=True)


if __name__ == "__main__":
    main()
