"""Tasks whose network gives per-pixel logits: binary, semantic, bottom-up instance.

What they share: the network is padded to its output stride and cropped back, its logits become
per-pixel probability maps (``logits_to_probs``), which the task's ``Predictor`` averages over
TTA views and tiles, and the loss is taken of the logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from segsweep.inference import Prediction
from segsweep.losses import build_loss
from segsweep.tasks.base import SegmentationTask


class PerPixelTask(SegmentationTask):
    """A network of per-pixel logits ``(N, num_outputs, H, W)`` (2D) or ``(N, num_outputs, D, H,
    W)`` (volumes), its loss and its probability maps."""

    loss_mode: str  # "binary" or "multiclass": decided by the task, never by the loss config

    # -- what subclasses define ---------------------------------------------------------------
    def logits_to_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> the per-pixel probability maps ``(N, K, H, W)`` predictions are made from,
        what TTA and tiling average (binary and semantic: one per class)."""
        raise NotImplementedError

    def compute_loss(self, logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The configured loss of the logits against the batch's mask, and its named terms."""
        loss = self.criterion(logits, batch["mask"])
        return loss, getattr(self.criterion, "last_terms", {})

    # -- built from config ----------------------------------------------------------------------
    def check_predictor(self) -> None:
        """Any predictor: TTA and tiling average the per-pixel maps."""

    def configure_models(self) -> None:
        super().configure_models()
        # An int (every spatial axis) or one per axis (3D nets: (z, y, x)).
        self.output_stride = getattr(self.net, "output_stride", 32)
        # Some decoders pool further than their stride (PAN): inputs must be at least this big.
        self.min_input_size = getattr(self.net, "min_input_size", self.output_stride)

    def configure_losses(self) -> None:
        self.criterion = build_loss(
            instantiate(self.hparams.loss), mode=self.loss_mode, ignore_index=self.hparams.ignore_index
        )

    # -- the network and its predictions -------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for images ``(N, C, H, W)`` or volumes ``(N, C, D, H, W)`` of any size: padded
        at the end of each spatial axis to the output stride, cropped back."""
        sizes = images.shape[2:]
        strides, least = (per_axis(v, len(sizes)) for v in (self.output_stride, self.min_input_size))
        pads = [max(n + -n % s, m) - n for n, s, m in zip(sizes, strides, least, strict=True)]
        if any(pads):
            images = F.pad(images, [p for pad in reversed(pads) for p in (0, pad)])  # last axis first
        return self.net(images)[(..., *(slice(0, n) for n in sizes))]

    def predict(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> Prediction:
        """The ``Prediction`` for ``images``, the network run through this task's predictor."""
        maps = self.predictor.maps(lambda x: self.logits_to_probs(self(x)), images)
        return self.postprocess(maps, valid)

    def to_prediction(self, logits: torch.Tensor, valid: torch.Tensor | None = None) -> Prediction:
        return self.postprocess(self.logits_to_probs(logits), valid)

    # -- losses -------------------------------------------------------------------------------------
    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.compute_loss(self(batch["image"]), batch)

    def evaluation_loss(self, logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.compute_loss(logits, batch)


def per_axis(value: int | tuple[int, ...], axes: int) -> tuple[int, ...]:
    """A stride or size given once for every spatial axis, or one per axis, as one per axis."""
    values = tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * axes
    if len(values) != axes:
        raise ValueError(f"the model's stride/size {value} has {len(values)} axes but the input has {axes} "
                         "spatial axes (a 3D model needs volumes (N, C, D, H, W), a 2D one images)")
    return values
