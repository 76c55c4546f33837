"""Optuna pruning inside a training job: report the monitored metric to the job's own trial each
validation epoch and stop when the study's pruner says so.

The sweeper (``hydra_plugins.segsweep_optuna_sweeper``) tells the job which trial it is through
environment variables (set with ``hydra.job.env_set``, so they reach joblib workers, SLURM nodes
and this job's DDP ranks alike); the trial itself is found in the study's storage, which every
process shares (a journal file on a shared file system, or a database).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from segsweep.callbacks.run_summary import to_float

STORAGE_ENV, STUDY_ENV, TRIAL_ENV = "SEGSWEEP_OPTUNA_STORAGE", "SEGSWEEP_OPTUNA_STUDY", "SEGSWEEP_OPTUNA_TRIAL"
PRUNER_ATTR = "segsweep_pruner"  # study user attribute: the pruner's config, written by the sweeper
PRUNED_ATTR = "segsweep_pruned_at_epoch"  # trial user attribute: set by the job that was pruned


def open_storage(spec: str):
    """An Optuna storage from a URL (``sqlite:///x.db``, ``postgresql://...``: RDB) or a file path
    (Optuna's journal file storage: no server, safe on NFS across nodes)."""
    import optuna

    if "://" in spec:
        return optuna.storages.RDBStorage(spec)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(spec))


@dataclass(frozen=True)
class TrialRef:
    """Which trial of which study this job is: storage spec, study name, trial number."""

    storage: str
    study_name: str
    number: int

    @classmethod
    def from_env(cls) -> TrialRef | None:
        if TRIAL_ENV not in os.environ:
            return None
        return cls(os.environ[STORAGE_ENV], os.environ[STUDY_ENV], int(os.environ[TRIAL_ENV]))

    def env(self) -> dict[str, str]:
        return {STORAGE_ENV: self.storage, STUDY_ENV: self.study_name, TRIAL_ENV: str(self.number)}

    def open(self):
        """The live ``optuna.Trial`` (report / should_prune), with the pruner the sweeper chose."""
        import optuna
        from hydra.utils import instantiate

        storage = open_storage(self.storage)
        study_id = storage.get_study_id_from_name(self.study_name)
        pruner_cfg = storage.get_study_user_attrs(study_id).get(PRUNER_ATTR)
        pruner = instantiate(pruner_cfg) if pruner_cfg else optuna.pruners.NopPruner()
        study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=pruner,
                                  sampler=optuna.samplers.RandomSampler())
        return optuna.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, self.number))


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
