"""The predictor: how a task's network is run over whole images (nnU-Net's ``nnUNetPredictor``,
MONAI's inferers), and the ``Prediction`` every task returns.

A ``Predictor`` holds only inference options: test-time augmentation and tiling. It is called with
images and a ``network``, a function from images ``(N, C, h, w)`` to per-pixel probability maps
``(N, K, h, w)`` (a task passes ``task.logits_to_probs(task(x))``), and decides how the images are
fed to it. A task is given its predictor when it is built (``load_task(ckpt, predictor=...)``;
training uses the plain one) and keeps it: validation, ``segsweep-eval`` and ``segsweep-predict``
all go through ``task.predict``, so the same options give the same maps everywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from segsweep.inference.tiling import sliding_window_probs
from segsweep.inference.tta import tta_probs

if TYPE_CHECKING:
    from segsweep.instance.postprocess import Instances

TTA_CHOICES = ("flips", "flips_rot90")


@dataclass(frozen=True)
class Predictor:
    """Inference options, checked when built (a bad value names the config key).

    Args:
        tta: ``None``, ``"flips"`` (identity + 2 flips) or ``"flips_rot90"`` (+ 3 rotations):
            probabilities averaged over the views, each mapped back first.
        tile_size: images with a side above this are predicted in overlapping square tiles
            blended with Gaussian weights (``sliding_window_probs``); ``None`` = whole images.
            Volumes: one side for every axis, or ``(D, H, W)``.
        tile_overlap: share of a tile overlapping its neighbour, in ``[0, 1)``.
        tile_batch_size: tiles per network call: the memory bound of tiling.
    """

    tta: str | None = None
    tile_size: int | tuple[int, ...] | None = None
    tile_overlap: float = 0.25
    tile_batch_size: int = 4

    def __post_init__(self) -> None:
        if self.tta not in (None, *TTA_CHOICES):
            raise ValueError(f"tta={self.tta!r} is not one of {[None, *TTA_CHOICES]}")
        per_axis = isinstance(self.tile_size, Sequence)  # a list, tuple or Hydra ListConfig
        sides = list(self.tile_size) if per_axis else [self.tile_size]
        if self.tile_size is not None and not all(isinstance(s, int) and s >= 1 for s in sides):
            raise ValueError(f"tile_size={self.tile_size!r} must be a positive number of pixels, one per "
                             "spatial axis (e.g. [16, 128, 128] for volumes), or null")
        if per_axis:  # a plain tuple: hashable, and printable in metrics.json
            object.__setattr__(self, "tile_size", tuple(sides))
        if not 0 <= self.tile_overlap < 1:
            raise ValueError(f"tile_overlap={self.tile_overlap!r} must be in [0, 1)")
        if not isinstance(self.tile_batch_size, int) or self.tile_batch_size < 1:
            raise ValueError(f"tile_batch_size={self.tile_batch_size!r} must be a positive integer")

    @classmethod
    def from_config(cls, cfg: Mapping) -> Predictor:
        """The options of an entry point's config (``tta``, ``tile_size``, ``tile_overlap``,
        ``tile_batch_size`` of ``conf/eval.yaml`` / ``conf/predict.yaml``), defaults for those absent."""
        return cls(**{option.name: cfg.get(option.name, option.default) for option in fields(cls)})

    @property
    def plain(self) -> bool:
        """Whole images in one network call, as in training (no TTA, no tiling)."""
        return not self.tta and not self.tile_size

    def options(self) -> dict:
        """The options as plain values (for metrics.json and predictions.json)."""
        return asdict(self)

    @torch.no_grad()
    def maps(self, network: Callable[[Tensor], Tensor], images: Tensor) -> Tensor:
        """Probability maps ``(N, K, H, W)`` of ``images`` ``(N, C, H, W)``.

        TTA runs inside each tile (not tiles inside each TTA view), so the network never sees
        more than ``tile_batch_size`` tiles at once (see ``segsweep.inference``).
        """
        predict = network
        if self.tta:
            predict = functools.partial(tta_probs, network, flips=True, rot90=self.tta == "flips_rot90")
        if not self.tile_size:
            return predict(images)
        return torch.stack([
            sliding_window_probs(predict, image, self.tile_size, self.tile_overlap, self.tile_batch_size)
            for image in images
        ])


@dataclass
class Prediction:
    """What every task's ``predict`` (and ``postprocess``) returns for a batch of N images.

    Attributes:
        labels: ``(N, H, W)`` class ids, ``0`` = background; for instance tasks each object's
            pixels carry its class.
        probs: ``(N, K, H, W)`` the per-pixel maps the labels were made from (the task's
            ``map_names``), or ``None`` when the network gives none (Mask R-CNN).
        instances: instance tasks: per image, the label image with one id per object and each
            object's class and score; ``None`` for binary and semantic tasks.
    """

    labels: Tensor
    probs: Tensor | None = None
    instances: list[Instances] | None = None

    @classmethod
    def from_instances(
        cls, instances: list[Instances], probs: Tensor | None = None, device: torch.device | None = None
    ) -> Prediction:
        """An instance task's prediction: ``labels`` paints each object's pixels with its class."""
        # In numpy, one tensor at the end: torch indexing per image cost 10-25x more (validation).
        labels = torch.from_numpy(np.stack([
            np.concatenate([[0], found.classes]).astype(np.int64)[found.labels] for found in instances
        ]))
        device = device if device is not None else (probs.device if probs is not None else None)
        return cls(labels=labels.to(device), probs=probs, instances=list(instances))
