"""Stop a run the moment its training loss stops being a finite number."""

from __future__ import annotations

import lightning as L
import torch


class DivergedError(RuntimeError):
    """Raised when the training loss is NaN or infinite; ``run_job`` records the run as failed."""


class DivergenceStop(L.Callback):
    """Raises :class:`DivergedError` ("diverged at epoch k ...") after the first training batch
    whose loss is NaN or inf, instead of training on to NaN metrics.

    Lightning's ``EarlyStopping(check_finite=True)`` only looks at a validation metric and stops
    quietly; a diverged run must fail at once, with the reason, so sweeps and Optuna record it.
    Under DDP each rank has its own loss: the ranks agree (any rank diverged -> all raise at the
    same step), so no rank waits forever in the next collective.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return  # a step that returned no loss (skipped batch): nothing to check
        diverged = not bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(diverged, all=False):
            raise DivergedError(
                f"diverged at epoch {trainer.current_epoch} (step {trainer.global_step}): "
                f"training loss {'is ' + str(loss.item()) if diverged else 'is not finite on another rank'}"
            )
