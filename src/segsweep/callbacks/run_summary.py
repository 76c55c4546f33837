"""Per-epoch metric history and training throughput: what metrics.json and reports are made of."""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable

import lightning as L
import torch

from segsweep.callbacks.logging_steps import is_logging_step
from segsweep.jobs.records import is_lower_better

CLEAR_REFS, STATUS = "/proc/self/clear_refs", "/proc/self/status"


def reset_peak_memory(device: torch.device) -> float:
    """Start measuring a step's peak memory from now (CUDA: the allocator's peak; Linux CPU: the
    process's peak RSS, VmHWM, which writing "5" to clear_refs resets to the current RSS); returns
    the memory in use now (MiB), measured as ``peak_memory_mb`` measures."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        with open(CLEAR_REFS, "w") as clear:
            clear.write("5")
    except OSError:  # not Linux, or /proc read-only: the lifetime peak below is all there is
        pass
    return peak_memory_mb(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory (MiB) since ``reset_peak_memory``: on CUDA ``torch.cuda.max_memory_allocated``
    (tensors only: weights, optimizer state, activations, gradients; not the allocator's cache);
    on CPU the process's peak resident set size, everything the process holds (Python, libraries,
    weights, data, activations), from /proc/self/status, else ``getrusage``'s lifetime peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open(STATUS) as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class RunSummary(L.Callback):
    """Records every validation epoch's metrics and the training images/s (validation excluded).

    ``best()`` gives each metric's best value over epochs (max, or min for losses and errors).
    Its state (history, throughput, attempts, wall time) is saved in checkpoints, so a resumed run's
    summary covers the whole run.
    """

    def __init__(self, on_epoch_end: Callable[[RunSummary], None] | None = None):
        self.history: list[dict] = []
        self.train_images = 0
        self.train_seconds = 0.0
        # Earlier attempts of this job (a resume restores them from the checkpoint).
        self.attempts = 1
        self.earlier_wall_seconds = 0.0
        self._attempt_start = time.time()
        self._epoch_start = 0.0
        self._val_start = 0.0
        self._val_seconds = 0.0
        self._in_epoch = False
        # Peak memory of a training step (rank zero's; see peak_memory_mb for what it counts), and
        # the most a step added to what was in use when it started (activations, gradients).
        self.peak_memory_mb: float | None = None
        self.peak_step_growth_mb: float | None = None
        self._step_start_mb = 0.0
        self._measuring = False  # this step's peak memory is measured (a logging step)
        self.on_epoch_end = on_epoch_end  # e.g. write a "running" metrics.json after each epoch

    @property
    def wall_seconds(self) -> float:
        """Wall time of all attempts: earlier ones up to their last checkpoint, plus this one."""
        return self.earlier_wall_seconds + time.time() - self._attempt_start

    def on_train_epoch_start(self, trainer, pl_module):
        self._epoch_start, self._val_seconds, self._in_epoch = time.perf_counter(), 0.0, True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # Peak memory on a run's first step and on logging steps only: training steps of one run
        # have the same shapes, and on CPU the two /proc reads cost ~0.4 ms, a share of a short
        # step that every step would pay. The first step: runs shorter than a logging interval.
        self._measuring = (batch_idx == 0 and trainer.current_epoch == 0) or is_logging_step(trainer)
        if self._measuring:
            self._step_start_mb = reset_peak_memory(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._measuring:
            peak = peak_memory_mb(pl_module.device)
            self.peak_memory_mb = max(self.peak_memory_mb or 0.0, peak)
            self.peak_step_growth_mb = max(self.peak_step_growth_mb or 0.0, peak - self._step_start_mb)
        self.train_images += batch["image"].shape[0] * trainer.world_size

    def on_validation_epoch_start(self, trainer, pl_module):
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module):
        self._val_seconds += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer, pl_module):
        self.train_seconds += self._epoch_train_seconds()
        self._in_epoch = False

    def _epoch_train_seconds(self) -> float:
        return time.perf_counter() - self._epoch_start - self._val_seconds if self._in_epoch else 0.0

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        # Lightning aggregates the epoch's train/* logs only after every on_train_epoch_end hook
        # (and the checkpoint): at this point they still hold the previous epoch's values. So the
        # row takes eval metrics from Lightning and this epoch's training loss from the task's sums.
        row.update({
            k.removesuffix("_epoch"): to_float(v)
            for k, v in trainer.callback_metrics.items()
            if not k.startswith(("test/", "train/")) and not k.endswith("_step")
        })
        sums, images = pl_module.train_loss_sums() if hasattr(pl_module, "train_loss_sums") else ({}, 0)
        if trainer.state.fn == "fit" and images:  # validation inside fit, not validate()
            count = trainer.strategy.reduce(torch.tensor(float(images), device=pl_module.device), reduce_op="sum")
            for name, total in sums.items():
                row[name] = to_float(trainer.strategy.reduce(total.clone(), reduce_op="sum") / count)
        self.history.append(row)
        if self.on_epoch_end is not None and trainer.is_global_zero:
            self.on_epoch_end(self)

    # A resumed run continues this history: Lightning saves it in every checkpoint.
    def state_dict(self) -> dict:
        return {
            "history": self.history, "train_images": self.train_images,
            # The checkpoint is written before on_train_epoch_end: count the epoch's time so far.
            "train_seconds": self.train_seconds + self._epoch_train_seconds(),
            "attempts": self.attempts, "wall_seconds": self.wall_seconds,
            "peak_memory_mb": self.peak_memory_mb, "peak_step_growth_mb": self.peak_step_growth_mb,
        }

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._stage = stage

    def load_state_dict(self, state: dict) -> None:
        # Lightning restores callbacks for test(ckpt_path=best) too: that must not rewind the history.
        if getattr(self, "_stage", "fit") != "fit":
            return
        self.history = list(state.get("history", []))
        self.train_images = int(state.get("train_images", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.attempts = int(state.get("attempts", 1)) + 1
        self.earlier_wall_seconds = float(state.get("wall_seconds", 0.0))
        self.peak_memory_mb = state.get("peak_memory_mb")
        self.peak_step_growth_mb = state.get("peak_step_growth_mb")

    def final(self) -> dict[str, float]:
        """The last validation epoch's values."""
        return {k: v for k, v in (self.history[-1] if self.history else {}).items() if k not in ("epoch", "step")}

    @property
    def images_per_second(self) -> float | None:
        return self.train_images / self.train_seconds if self.train_seconds > 0 else None

    def best(self) -> dict[str, float]:
        best: dict[str, float] = {}
        for row in self.history:
            for name, value in row.items():
                if name in ("epoch", "step") or value is None or math.isnan(value):
                    continue
                lower = is_lower_better(name)
                if name not in best or (value < best[name] if lower else value > best[name]):
                    best[name] = value
        return best


def to_float(value) -> float | None:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else None
    return float(value) if isinstance(value, (int, float)) else None
