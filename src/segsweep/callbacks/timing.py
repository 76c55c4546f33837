"""How long evaluation spends after the network: post-processing and metrics, per epoch.

``time/postprocess``: seconds per validation epoch of the task's post-processing (what its steps
run inside ``task.postprocessing()``: outputs -> objects -> metric updates) plus the epoch-end
metric computation (instance tasks: COCO mask AP); ``time/postprocess_fraction``: its share of the
validation epoch's wall time. The test stage logs ``time/test_postprocess`` and
``time/test_postprocess_fraction``. Instance tasks ask for this callback themselves
(``InstanceTask.configure_callbacks``), so every entry point and Trainer logs it.
"""

from __future__ import annotations

import time

import lightning as L


class PostprocessTime(L.Callback):
    """Logs the post-processing time of each validation and test epoch (see the module)."""

    def __init__(self):
        self._started = self._seconds_before = 0.0

    def _start(self, task: L.LightningModule) -> None:
        self._started, self._seconds_before = time.perf_counter(), task.postprocess_seconds

    def _log(self, task: L.LightningModule, stage: str) -> None:
        # The task computes its metrics after the callbacks' epoch-end hooks: computed here first to
        # time them (torchmetrics keeps the values until the task's own compute and reset).
        started = time.perf_counter()
        task.metrics[stage].compute()
        now = time.perf_counter()
        post = task.postprocess_seconds - self._seconds_before + now - started
        key = "time/postprocess" if stage == "val" else f"time/{stage}_postprocess"
        task.log(key, post)
        task.log(f"{key}_fraction", post / max(now - self._started, 1e-9))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(pl_module, "test")
