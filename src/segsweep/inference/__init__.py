"""Inference: the ``Predictor`` (TTA and tiling options a task's network is run with) and the
``Prediction`` every task returns, over two helpers: tiled (sliding-window) prediction of large
images and test-time augmentation.

Both helpers take a ``predict`` callable mapping images ``(N, C, h, w)`` to probabilities
``(N, K, h, w)`` (e.g. ``lambda x: task.logits_to_probs(task(x))``; the task pads to its output
stride), so they compose. ``Predictor`` puts TTA inside each tile::

    probs = sliding_window_probs(lambda tiles: tta_probs(predict, tiles), image, tile_size=512)

rather than tiles inside TTA: the transforms then run one after the other on a batch of at most
``batch_size`` tiles, so the memory bound of the sliding window still holds, and the whole-image
accumulators are allocated once instead of once per transform.
"""

from .predictor import TTA_CHOICES, Prediction, Predictor
from .tiling import gaussian_importance_map, sliding_window_probs, tile_starts
from .tta import tta_probs

__all__ = [
    "TTA_CHOICES",
    "Prediction",
    "Predictor",
    "gaussian_importance_map",
    "sliding_window_probs",
    "tile_starts",
    "tta_probs",
]
