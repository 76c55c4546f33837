"""Callbacks and loggers from their config groups: every entry with a ``_target_`` is built."""

from __future__ import annotations

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig


def _build_all(group: DictConfig | None, kind: str, **fill) -> list:
    """Every node of ``group`` with a ``_target_``; ``fill`` sets keys a node leaves null."""
    if not group:
        return []
    if not isinstance(group, DictConfig):
        raise TypeError(f"the {kind} config must be a mapping of name -> {{_target_: ...}}, got {group!r}")
    built = []
    for name, node in group.items():
        if node is None:  # switched off with e.g. callbacks.early_stopping=null
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ValueError(f"{kind}.{name} has no _target_: {node}")
        built.append(instantiate(node, **{k: v for k, v in fill.items() if k in node and node[k] is None}))
    return built


def instantiate_loggers(cfg: DictConfig | None, run_id: str | None = None) -> list[Logger]:
    """The loggers; ``run_id`` (the job's own, kept in its job.json) goes to those with ``id: null``
    (W&B), so a resumed job continues its run."""
    return _build_all(cfg, "logger", id=run_id)


def instantiate_callbacks(cfg: DictConfig | None, has_logger: bool) -> list[L.Callback]:
    callbacks = _build_all(cfg, "callbacks")
    if not has_logger:  # LearningRateMonitor refuses to run without a logger
        dropped = [c for c in callbacks if isinstance(c, LearningRateMonitor)]
        if dropped:
            rank_zero_info("no logger configured: LearningRateMonitor is left out")
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks
