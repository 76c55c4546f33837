"""Per-epoch metric history and training throughput: what metrics.json and reports are made of."""

from __future__ import annotations

import math
import time

import lightning as L
import torch

# Instance errors: adapted Rand error and variation of information (segsweep.instance.metrics).
LOWER_IS_BETTER_METRICS = ("are", "voi")


def is_lower_better(name: str) -> bool:
    return (
        "loss" in name
        or "error" in name
        or name.startswith("time/")
        or name.rsplit("/", 1)[-1] in LOWER_IS_BETTER_METRICS
    )


class RunSummary(L.Callback):
    """Records every validation epoch's metrics and the training images/s (validation excluded).

    ``best()`` gives each metric's best value over epochs (max, or min for losses and errors).
    """

    def __init__(self):
        self.history: list[dict] = []
        self.train_images = 0
        self.train_seconds = 0.0
        self._epoch_start = 0.0
        self._val_start = 0.0
        self._val_seconds = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._epoch_start, self._val_seconds = time.perf_counter(), 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_images += batch["image"].shape[0] * trainer.world_size

    def on_validation_epoch_start(self, trainer, pl_module):
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module):
        self._val_seconds += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer, pl_module):
        self.train_seconds += time.perf_counter() - self._epoch_start - self._val_seconds

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        # Per-step values ("..._step") are noise at epoch level; their epoch means are kept.
        row.update({
            k.removesuffix("_epoch"): to_float(v)
            for k, v in trainer.callback_metrics.items()
            if not k.startswith("test/") and not k.endswith("_step")
        })
        self.history.append(row)

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
