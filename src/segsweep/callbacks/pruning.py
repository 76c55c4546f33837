"""Optuna pruning inside a training job: report the monitored metric to the job's own trial each
validation epoch and stop when the study's pruner says so.

The sweeper (``hydra_plugins.segsweep_optuna_sweeper``) tells the job which trial it is through
environment variables (set with ``hydra.job.env_set``, so they reach joblib workers, SLURM nodes
and this job's DDP ranks alike); the trial itself is found in the study's storage, which every
process shares (a journal file on a shared file system, or a database).
"""

from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from segsweep.callbacks.run_summary import to_float
from segsweep.jobs.trial import PRUNED_ATTR, TrialRef


class OptunaPruning(L.Callback):
    """Reports ``monitor`` to the Optuna trial after each validation epoch (rank zero) and stops
    training when the pruner prunes it; ``pruned_epoch`` then says after which epoch.

    The decision is broadcast from rank zero so every DDP rank stops at the same epoch. (Unlike
    optuna-integration's ``PyTorchLightningPruningCallback``, which raises ``TrialPruned`` and
    needs a check after ``fit`` under DDP, the run ends normally and writes its metrics.json.)
    """

    def __init__(self, trial: TrialRef, monitor: str):
        self.trial_ref = trial
        self.monitor = monitor
        self.pruned_epoch: int | None = None
        self.last_value: float | None = None
        self._trial = None

    def on_fit_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            self._trial = self.trial_ref.open()

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        prune = False
        if trainer.is_global_zero:
            self.last_value = value = to_float(trainer.callback_metrics.get(self.monitor))
            if value is not None and math.isfinite(value):  # NaN is the divergence check's case
                self._trial.report(value, step=epoch)
                prune = self._trial.should_prune()
            if prune:
                self._trial.set_user_attr(PRUNED_ATTR, epoch)
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned_epoch = epoch
            trainer.should_stop = True
            for logger in trainer.loggers:  # one number every logger keeps (W&B, CSV, TensorBoard)
                logger.log_metrics({"optuna/pruned_at_epoch": epoch}, step=trainer.global_step)
            rank_zero_info(f"Optuna trial {self.trial_ref.number} pruned after epoch {epoch} "
                           f"({self.monitor} = {self.last_value})")


def pruning_callback(monitor: str) -> OptunaPruning | None:
    """The pruning callback if this job is an Optuna trial, else None."""
    ref = TrialRef.from_env()
    return OptunaPruning(ref, monitor) if ref else None


def pruned_epoch(trainer: L.Trainer) -> int | None:
    """After which epoch the trial's pruner stopped this run (None: not pruned, or no trial)."""
    return next((c.pruned_epoch for c in trainer.callbacks if isinstance(c, OptunaPruning)), None)
