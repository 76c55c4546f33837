"""Sliding-window (tiled) prediction of images too large for one forward pass.

Written by hand on purpose, after measuring MONAI's ``SlidingWindowInferer`` (docs/benchmarks.md,
"Sliding-window inference"): its Gaussian mode floors weights at 1e-3 (x33 the seam error of ours) and pads
images smaller than a tile; made bit-identical it still needs our weight map and tile clipping, so it would
save ~40 lines for a dependency needing torch>=2.8 and 2.5 s of import. The blending follows
nnU-Net (Isensee et al. 2021): each tile's probabilities are weighted by a Gaussian centred on the
tile, so pixels near a tile border, whose context was cut by the tile, count little wherever a
neighbouring tile sees them closer to its centre; the weighted sum is divided by the summed weights.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable

import torch
from torch import Tensor

# Floor of the weights (the centre weighs 1): keeps every weight, hence every division, above zero
# where a small sigma would underflow. Kept tiny on purpose: in the corner where four tiles overlap
# a tile that sees a pixel with full context may itself weigh only ~1e-2, and a floor of 1e-3 on the
# cut-context tiles there measurably spoilt the blend (errors x50 in tests/test_inference.py).
MIN_WEIGHT = 1e-6


def tile_starts(length: int, tile: int, step: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``0..length``, every ``step`` pixels.

    The last tile is flush with the border (it overlaps its neighbour more than ``step`` says)
    rather than sticking out, so no tile needs padding beyond the image.
    """
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


def gaussian_importance_map(
    *sizes: int, sigma_scale: float | None = 1 / 8, min_weight: float = MIN_WEIGHT
) -> Tensor:
    """Blending weights of a tile of ``sizes`` (``height, width`` or ``depth, height, width``): a
    Gaussian of ``sigma = side * sigma_scale`` per axis, max 1.

    Values are clipped below at ``min_weight`` so that tile borders still count where no other
    tile covers them (image borders, corners). ``sigma_scale=None`` gives uniform weights (plain
    averaging of overlapping tiles).
    """
    if sigma_scale is None:
        return torch.ones(sizes)

    def axis(n: int) -> Tensor:
        centre, sigma = (n - 1) / 2, max(n * sigma_scale, 1e-6)
        return torch.exp(-((torch.arange(n, dtype=torch.float64) - centre) ** 2) / (2 * sigma**2))

    weights = functools.reduce(lambda w, n: w[..., None] * axis(n), sizes[1:], axis(sizes[0]))  # separable
    return (weights / weights.max()).clamp_min(min_weight).float()


@torch.no_grad()
def sliding_window_probs(
    predict: Callable[[Tensor], Tensor],
    image: Tensor,
    tile_size: int | tuple[int, ...],
    overlap: float = 0.25,
    batch_size: int = 4,
    sigma_scale: float | None = 1 / 8,
) -> Tensor:
    """Probabilities ``(K, H, W)`` of one image ``(C, H, W)``, predicted tile by tile; volumes
    ``(C, D, H, W)`` alike, in tiles of ``D x H x W`` (``(K, D, H, W)``).

    Args:
        predict: maps images ``(N, C, h, w)`` to probabilities ``(N, K, h, w)`` of the same size
            (it pads to the model's output stride itself, as ``SegmentationTask.forward`` does).
        image: one image ``(C, H, W)``, already normalised as in training.
        tile_size: side of the square (cubic) tiles, or one side per axis; best a multiple of
            the model's output stride and as large as memory allows (fewer tile borders, more
            context). An image no larger than one tile is predicted in one call; a side smaller
            than ``tile_size`` gives tiles of that side in that dimension.
        overlap: fraction of a tile shared with its neighbour; tiles start every
            ``tile_size * (1 - overlap)`` pixels. Make the overlap (in pixels) larger than the
            model's receptive field radius so that every pixel has one tile with full context.
        batch_size: tiles per ``predict`` call: the memory bound (see below).
        sigma_scale: Gaussian sigma as a fraction of the tile side (nnU-Net's 1/8); ``None`` for
            uniform weights.

    Memory bound (tile_memory_bound): the network only ever sees a batch of ``batch_size`` tiles
    of ``tile_size``² pixels (plus stride padding), so its peak memory is that of a forward pass
    on ``(batch_size, C, tile_size, tile_size)``, whatever the image size. The only
    image-sized buffers are the accumulators, ``(K + 1) * H * W`` float32 on ``image.device``:
    keep a huge image on the CPU and let ``predict`` move each batch to the GPU and back.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if image.ndim not in (3, 4):
        raise ValueError(f"image must be (C, H, W) or a volume (C, D, H, W), got shape {tuple(image.shape)}")
    sizes = image.shape[1:]
    tile_sides = tile_size if isinstance(tile_size, (tuple, list)) else (tile_size,) * len(sizes)
    if len(tile_sides) != len(sizes):
        raise ValueError(f"tile_size={tile_size} has {len(tile_sides)} sides for {len(sizes)} spatial axes")
    if all(n <= t for n, t in zip(sizes, tile_sides, strict=True)):
        return predict(image[None])[0].to(image.device, torch.float32)

    tile = [min(t, n) for t, n in zip(tile_sides, sizes, strict=True)]
    starts = [tile_starts(n, t, max(1, math.floor(side * (1 - overlap))))
              for n, t, side in zip(sizes, tile, tile_sides, strict=True)]
    corners = list(itertools.product(*starts))
    weight = gaussian_importance_map(*tile, sigma_scale=sigma_scale).to(image.device)

    def window(corner: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(c, c + t) for c, t in zip(corner, tile, strict=True))

    total: Tensor | None = None  # created at the first batch, once K is known
    norm = torch.zeros(sizes, device=image.device)
    for first in range(0, len(corners), batch_size):
        batch = corners[first : first + batch_size]
        tiles = torch.stack([image[(slice(None), *window(corner))] for corner in batch])
        probs = predict(tiles).to(image.device, torch.float32)
        if total is None:
            total = torch.zeros(probs.shape[1], *sizes, device=image.device)
        for corner, tile_probs in zip(batch, probs, strict=True):
            total[(slice(None), *window(corner))] += tile_probs * weight
            norm[window(corner)] += weight
    return total / norm
