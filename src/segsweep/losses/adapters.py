"""Thin adapters so every loss takes ``(mode, ignore_index)`` and honours ``ignore_index``.

- ``BCEWithLogits`` (binary only) wraps smp's ``SoftBCEWithLogitsLoss``, which takes no ``mode``
  and, with ``ignore_index``, divides by *all* pixels, ignored ones included, so the loss would
  shrink as the ignored fraction grows: here it is averaged over the kept pixels only.
- ``CrossEntropy`` (multiclass only) is torch's cross-entropy, not smp's ``SoftCrossEntropyLoss``:
  that one fails without a ``smooth_factor`` (it divides ``None``) and averages over ignored
  pixels too; torch's has label smoothing, class weights and a proper ``ignore_index``.
- ``FocalLoss`` and ``LovaszLoss`` are smp's, except when every pixel of a batch is ignored:
  smp's focal loss then returns NaN (a mean of nothing) and its multiclass Lovasz loss an empty
  tensor instead of a scalar; here both return a zero that keeps the graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segmentation_models_pytorch import losses as smp_losses
from torch import nn

from segsweep.losses.build import check_mode


def _kept(target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """Boolean map of the pixels the loss sees."""
    if ignore_index is None:
        return torch.ones_like(target, dtype=torch.bool)
    return target != ignore_index


class BCEWithLogits(nn.Module):
    """Binary cross-entropy on one logit channel, averaged over non-ignored pixels.

    Args:
        pos_weight: weight of the object class's term (> 1 favours recall), or ``None``.
        smooth_factor: label smoothing, targets become ``{f, 1 - f}`` instead of ``{0, 1}``.
    """

    modes = ("binary",)

    def __init__(
        self,
        mode: str,
        ignore_index: int | None = None,
        pos_weight: float | None = None,
        smooth_factor: float | None = None,
    ):
        check_mode(type(self), mode)
        super().__init__()
        self.ignore_index = ignore_index
        self.bce = smp_losses.SoftBCEWithLogitsLoss(
            ignore_index=None,  # masked here, to average over the kept pixels only
            reduction="none",
            smooth_factor=smooth_factor,
            pos_weight=None if pos_weight is None else torch.tensor(float(pos_weight)),
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        kept = _kept(target, self.ignore_index).unsqueeze(1)  # (N, 1, H, W) like the logits
        target = target.unsqueeze(1).where(kept, 0).to(logits.dtype)
        loss = self.bce(logits, target) * kept
        return loss.sum() / kept.sum().clamp_min(1)


class CrossEntropy(nn.Module):
    """Softmax cross-entropy, averaged over non-ignored pixels (weighted mean with class weights).

    Args:
        label_smoothing: torch's label smoothing, in [0, 1).
        class_weights: one weight per class, or ``None``.
    """

    modes = ("multiclass",)

    def __init__(
        self,
        mode: str,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
    ):
        check_mode(type(self), mode)
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = float(label_smoothing)
        weight = (
            None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float)
        )
        self.register_buffer("class_weights", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        kept = _kept(target, self.ignore_index)
        target = target.where(kept, 0)
        loss = F.cross_entropy(
            logits,
            target,
            weight=self.class_weights,
            label_smoothing=self.label_smoothing,
            reduction="none",
        )
        # torch's own "mean" is NaN when every pixel is ignored; this is 0 then.
        weight = kept if self.class_weights is None else self.class_weights[target] * kept
        return (loss * kept).sum() / weight.sum().clamp_min(1e-12)


class _ZeroIfAllIgnored:
    """Mixin for smp losses that break on a batch whose pixels are all ignored."""

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        # smp's ignore_index handling already indexes with a boolean mask (a host sync); this
        # check costs no more.
        if self.ignore_index is not None and not bool((y_true != self.ignore_index).any()):
            return y_pred.sum() * 0.0
        return super().forward(y_pred, y_true)


class FocalLoss(_ZeroIfAllIgnored, smp_losses.FocalLoss):
    """smp's focal loss (in multiclass mode: one-vs-rest sigmoid focal terms, averaged).

    Args:
        gamma: focusing power (0 gives BCE).
        alpha: weight of the positive term in [0, 1], or ``None`` for none.
    """


class LovaszLoss(_ZeroIfAllIgnored, smp_losses.LovaszLoss):
    """smp's Lovasz loss: hinge on logits in binary mode, Lovasz-softmax in multiclass mode.

    Args:
        per_image: average the loss per image instead of computing it over the whole batch.
    """
