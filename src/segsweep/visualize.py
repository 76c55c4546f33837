"""Overlays of label maps on images: what validation images, reports and predictions show."""

from __future__ import annotations

import numpy as np
import torch

# Distinct colours for classes (index 0 = background stays uncoloured in overlays).
PALETTE = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
     [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195], [128, 128, 0],
     [255, 215, 180], [0, 0, 128], [128, 128, 128]],
    dtype=np.uint8,
)


def to_display(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A ``(C, H, W)`` normalised image as ``(H, W, 3)`` uint8, stretched to its own range."""
    array = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else image
    array = array[:3] if array.shape[0] >= 3 else np.repeat(array[:1], 3, axis=0)
    low, high = array.min(), array.max()
    array = (array - low) / (high - low + 1e-8)
    return (array.transpose(1, 2, 0) * 255).astype(np.uint8)


def colorize(labels: np.ndarray, instance: bool = False) -> np.ndarray:
    """Label map -> colours; instance ids get pseudo-random colours so neighbours differ."""
    labels = np.asarray(labels).astype(np.int64)
    if instance:
        rng = np.random.default_rng(0)
        palette = rng.integers(40, 256, size=(int(labels.max()) + 1, 3), dtype=np.uint8)
        palette[0] = 0
        return palette[labels]
    return PALETTE[labels % len(PALETTE)]


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5, instance: bool = False,
            ignore_index: int | None = None) -> np.ndarray:
    """Blend coloured labels over a uint8 image; background (0) and ignored pixels stay as is."""
    labels = np.asarray(labels)
    colours = colorize(np.where(labels == ignore_index, 0, labels) if ignore_index is not None else labels,
                       instance)
    shown = (labels > 0) if ignore_index is None else (labels > 0) & (labels != ignore_index)
    out = image.astype(np.float32)
    out[shown] = (1 - alpha) * out[shown] + alpha * colours[shown]
    return out.astype(np.uint8)


def prediction_grid(images, preds, targets, ignore_index: int | None = None,
                    instance: bool = False) -> np.ndarray:
    """Rows of [image | prediction overlay | target overlay] as one uint8 picture."""
    rows = []
    for image, pred, target in zip(images, preds, targets, strict=True):
        shown = to_display(image)
        pred, target = (np.asarray(t.cpu()) if isinstance(t, torch.Tensor) else t for t in (pred, target))
        rows.append(np.concatenate([
            shown,
            overlay(shown, pred, instance=instance),
            overlay(shown, target, instance=instance, ignore_index=ignore_index),
        ], axis=1))
    return np.concatenate(rows, axis=0)
