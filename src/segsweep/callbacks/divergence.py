"""Stop a run soon after its training loss stops being a finite number."""

from __future__ import annotations

import lightning as L
import torch

from segsweep.callbacks.logging_steps import is_logging_step


class DivergedError(RuntimeError):
    """Raised when the training loss is NaN or infinite; ``run_job`` records the run as failed."""


class DivergenceStop(L.Callback):
    """Raises :class:`DivergedError` ("diverged at epoch k ...") within ``trainer.log_every_n_steps``
    training steps of the first loss that is NaN or inf, and at the latest at the epoch's end,
    instead of training on to NaN metrics.

    Lightning's ``EarlyStopping(check_finite=True)`` only looks at a validation metric and stops
    quietly; a diverged run must fail, with the reason, so sweeps and Optuna record it.

    It checks the task's running sum of the epoch's training loss (``train_loss_sums``): a sum
    stays NaN or inf once one step's loss was. Reading a value off the GPU waits for the device,
    and under DDP the ranks must agree (any rank diverged -> all raise at the same step, so none
    waits forever in the next collective); so the check runs only on the steps where Lightning
    logs anyway, not on every step, where it stalled the GPU pipeline and added an all-reduce.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if is_logging_step(trainer, trainer.global_step - 1):  # the step just done
            self.check(trainer, pl_module, outputs)

    def on_train_epoch_end(self, trainer, pl_module):
        self.check(trainer, pl_module, None)

    @staticmethod
    def check(trainer: L.Trainer, pl_module: L.LightningModule, outputs) -> None:
        sums = getattr(pl_module, "train_loss_sums", None)
        if sums is not None:
            loss = sums()[0].get("train/loss")
        else:  # a module without running sums: this step's own loss
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return  # no loss yet (no step, or a skipped batch): nothing to check
        loss = loss.detach()
        diverged = not bool(torch.isfinite(loss).all())
        if trainer.strategy.reduce_boolean_decision(diverged, all=False):
            value = "nan" if diverged and bool(torch.isnan(loss).any()) else "inf"
            raise DivergedError(
                f"diverged at epoch {trainer.current_epoch} (step {trainer.global_step}): "
                f"training loss is {value if diverged else 'not finite on another rank'}"
            )
