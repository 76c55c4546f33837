"""Test-time augmentation: average the probabilities over flips (and 90° rotations).

Each view is transformed, predicted, and transformed back before averaging, so the average is
pixel-aligned with the input. Rotations of non-square images are fine: the nets are fully
convolutional, they take the (W, H) view as well as the (H, W) one (``predict`` pads to the
output stride).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

H, W = -2, -1  # spatial dims of (N, C, H, W)


Transform = Callable[[Tensor], Tensor]


def _views(flips: bool, rot90: bool) -> list[tuple[Transform, Transform]]:
    """(transform, inverse) pairs; the identity first."""
    views = [(lambda t: t, lambda t: t)]
    if flips:  # a flip is its own inverse
        views += [(lambda t, d=d: t.flip(d), lambda t, d=d: t.flip(d)) for d in (W, H)]
    if rot90:  # rotate by k quarter turns, back by -k
        views += [
            (lambda t, k=k: t.rot90(k, (H, W)), lambda t, k=k: t.rot90(-k, (H, W)))
            for k in (1, 2, 3)
        ]
    return views


@torch.no_grad()
def tta_probs(
    predict: Callable[[Tensor], Tensor], images: Tensor, flips: bool = True, rot90: bool = False
) -> Tensor:
    """Mean probabilities ``(N, K, H, W)`` over augmented views of ``images`` ``(N, C, H, W)``.

    Args:
        predict: maps images ``(N, C, h, w)`` to probabilities ``(N, K, h, w)``.
        images: a batch, already normalised as in training.
        flips: add the horizontal and vertical flips (3 views in all).
        rot90: add the 90°, 180° and 270° rotations (the 180° one equals both flips at once; it
            is kept so each rotation angle counts once).

    The views are predicted one after the other, not stacked into one batch: the peak memory is
    that of a single ``predict(images)`` call (which keeps the sliding-window memory bound when
    TTA runs inside each tile, see ``segsweep.inference``). Averaging probabilities, not logits,
    keeps the result a probability whatever the task's activation.
    """
    total = None
    views = _views(flips, rot90)
    for forward, inverse in views:
        probs = inverse(predict(forward(images))).float()
        total = probs if total is None else total + probs
    return total / len(views)
