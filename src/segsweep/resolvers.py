"""OmegaConf resolvers the configs use; the entry points register them (``register``)."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf


def sweep_group() -> str | None:
    """The W&B group of a multirun's jobs: its sweep dir's date and time (None for single runs)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return "_".join(Path(HydraConfig.get().sweep.dir).parts[-2:])


def join_name(*parts) -> str:
    """``arch-encoder-loss``, leaving out empty parts (models without an encoder)."""
    return "-".join(str(part) for part in parts if part not in (None, ""))


def task_labels(task_target: str) -> str:
    """The labels a task class (``task._target_``) trains on, ``binary``, ``semantic`` or
    ``instance``: what the built-in synthetic data generates for it, whatever the task config's
    file is called."""
    from hydra.utils import get_class

    from segsweep.tasks import BinarySegmentationTask, InstanceTask, SemanticSegmentationTask

    task = get_class(task_target)
    for labels, kind in (("instance", InstanceTask), ("binary", BinarySegmentationTask),
                         ("semantic", SemanticSegmentationTask)):
        if issubclass(task, kind):
            return labels
    raise ValueError(f"task._target_={task_target!r} is not a segsweep binary, semantic or instance task")


def register() -> None:
    """Register the resolvers (once per process; a second call changes nothing)."""
    # Replicas: sweep=repeats expands sweep.repeats into seeds; W&B groups runs by set-up.
    from segsweep.replicas import replica_seeds, setup_key

    for name, resolver in (("sweep_group", sweep_group), ("join_name", join_name), ("task_labels", task_labels),
                           ("replica_seeds", replica_seeds), ("setup_key", setup_key)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
