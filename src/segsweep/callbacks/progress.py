"""Lightning's rich progress bar, reading the per-step loss only on logging steps."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar

from segsweep.callbacks.logging_steps import is_logging_step

STEP_LOSS = "train/loss_step"  # logged by the task on logging steps, for the loggers (not the bar)


class ProgressBar(RichProgressBar):
    """``RichProgressBar`` that shows the per-step training loss read on logging steps only.

    Turning a CUDA tensor into a number waits for the GPU (a host-device sync). Lightning reads
    the progress bar's metrics after every batch, and once a per-step value is logged with
    ``prog_bar=True`` its logger connector converts it at every batch until the epoch ends: two
    syncs a step on an H200 (docs/benchmarks.md, "The GPU check"). So the task logs the per-step
    loss for the loggers only, and this bar reads it itself on the steps where it changes.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._step_loss: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()  # as Lightning's: a resumed mid-epoch start
        self._update(self.train_progress_bar_id, batch_idx + 1)
        if is_logging_step(trainer, trainer.global_step - 1):
            value = trainer.callback_metrics.get(STEP_LOSS)
            self._step_loss = float(value) if value is not None else self._step_loss
            self._update_metrics(trainer, pl_module)
        self.refresh()

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        if self._step_loss is not None and trainer.training:
            metrics[STEP_LOSS] = self._step_loss
        return metrics
