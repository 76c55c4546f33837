"""Power Jaccard and power Dice losses (Duque-Arias et al., VISAPP 2021), which smp lacks.

Both subclass smp's ``DiceLoss`` and replace only its ``compute_score`` hook, so activation, mode
handling, ``ignore_index`` masking, ``classes``/``class_weights`` and class averaging stay smp's
own. (smp's ``JaccardLoss`` computes its score inline, with no hook to override; its ``forward``
is otherwise the same as ``DiceLoss``'s, and a test checks that ``PowerJaccardLoss`` with p = 1
equals it.) Like smp's, the score is computed over the whole batch per class; a class with no
target pixel in the batch contributes 0 but still counts in the mean over classes.
"""

from __future__ import annotations

import torch
from segmentation_models_pytorch.losses import DiceLoss


class _PowerLoss(DiceLoss):
    """Shared arguments of the power losses.

    Args:
        p: power of the sums in the denominator, >= 1 (the paper uses 1, 1.5, 2; p = 1 is the
            plain soft loss). p < 1 is refused: the gradient of y_hat^p is infinite at y_hat = 0,
            which every ignored pixel is after masking.
        smooth: s, added to numerator and denominator (10 in the authors' code).
        classes: class ids the loss is averaged over (multiclass only); all by default.
        class_weights: per-class weights of that average (multiclass only).
        log_loss: ``-log(score)`` instead of ``1 - score``.
    """

    def __init__(
        self,
        mode: str,
        p: float = 2.0,
        smooth: float = 10.0,
        ignore_index: int | None = None,
        from_logits: bool = True,
        classes: list[int] | None = None,
        eps: float = 1e-7,
        log_loss: bool = False,
        class_weights: list[float] | None = None,
    ):
        if p < 1:
            raise ValueError(f"{type(self).__name__}: p must be >= 1, got {p}")
        super().__init__(
            mode,
            classes=classes,
            log_loss=log_loss,
            from_logits=from_logits,
            smooth=smooth,
            ignore_index=ignore_index,
            eps=eps,
            class_weights=class_weights,
        )
        self.p = float(p)

    def sums(self, output: torch.Tensor, target: torch.Tensor, dims) -> tuple[torch.Tensor, ...]:
        """sum(y * y_hat) and sum(y^p) + sum(y_hat^p), per class."""
        intersection = torch.sum(output * target, dim=dims)
        powers = torch.sum(output.pow(self.p), dim=dims) + torch.sum(target.pow(self.p), dim=dims)
        return intersection, powers


class PowerJaccardLoss(_PowerLoss):
    """1 - (sum(y y_hat) + s) / (sum(y^p) + sum(y_hat^p) - sum(y y_hat) + s), per class.

    Arguments as ``_PowerLoss``; p = 1 with the same ``smooth`` is smp's soft ``JaccardLoss``.
    """

    def compute_score(self, output, target, smooth=0.0, eps=1e-7, dims=None) -> torch.Tensor:
        intersection, powers = self.sums(output, target, dims)
        return (intersection + smooth) / (powers - intersection + smooth).clamp_min(eps)


class PowerDiceLoss(_PowerLoss):
    """1 - (2 sum(y y_hat) + s) / (sum(y^p) + sum(y_hat^p) + s), per class.

    Arguments as ``_PowerLoss``. Note smp's own ``DiceLoss`` (0.6) computes
    (2I + 2s) / (|y| + |y_hat| + 2s): its ``smooth`` counts twice, so
    ``PowerDiceLoss(p=1, smooth=s)`` equals smp's ``DiceLoss(smooth=s / 2)``.
    """

    def compute_score(self, output, target, smooth=0.0, eps=1e-7, dims=None) -> torch.Tensor:
        intersection, powers = self.sums(output, target, dims)
        return (2 * intersection + smooth) / (powers + smooth).clamp_min(eps)
