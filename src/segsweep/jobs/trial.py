"""Which Optuna trial a job is, and how it opens it: the protocol between the sweeper
(``hydra_plugins.segsweep_optuna_sweeper``) and a job's pruning callback.

The sweeper tells a job its trial through environment variables (``hydra.job.env_set``, so they
reach joblib workers, SLURM nodes and the job's DDP ranks alike); the job finds the trial in the
study's storage, which every process shares (a journal file on a shared file system, or a
database).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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
