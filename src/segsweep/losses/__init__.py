"""Segmentation losses: smp.losses where smp has them, plus what it lacks.

``conf/loss/*.yaml`` are ``_partial_: true`` factories; the task completes them with
``build_loss(factory, mode=..., ignore_index=...)``. Every target accepts both keywords, so the
loss configs never name a mode; losses valid in one mode only raise a ValueError listing the
configs valid for the task's mode.
"""

from segsweep.losses.adapters import BCEWithLogits, CrossEntropy, FocalLoss, LovaszLoss
from segsweep.losses.build import (
    MODES,
    WeightedSum,
    build_loss,
    config_modes,
    loss_configs,
    losses_for_mode,
)
from segsweep.losses.power import PowerDiceLoss, PowerJaccardLoss

__all__ = [
    "MODES",
    "BCEWithLogits",
    "CrossEntropy",
    "FocalLoss",
    "LovaszLoss",
    "PowerDiceLoss",
    "PowerJaccardLoss",
    "WeightedSum",
    "build_loss",
    "config_modes",
    "loss_configs",
    "losses_for_mode",
]
