"""Pixel metrics for binary and semantic tasks, all from torchmetrics.

Dice is torchmetrics' F1 score: over a dataset's pixels, F1 = 2TP / (2TP + FP + FN) is exactly the
Dice coefficient of each class. Inputs are label maps (``(N, H, W)`` predicted class ids) so one
collection serves both tasks and shares its confusion statistics through compute groups.
"""

from __future__ import annotations

from torchmetrics import ClasswiseWrapper, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryJaccardIndex,
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassJaccardIndex,
)


def segmentation_metrics(class_names: list[str], ignore_index: int, binary: bool) -> MetricCollection:
    """``iou``, ``dice``, ``acc`` and per-class ``iou/<class name>``.

    For a binary task ``iou`` and ``dice`` are those of the object class (index 1), the figure a
    binary benchmark reports; for a semantic task they are means over classes (classes absent from
    both prediction and target are left out of the mean). Pixels equal to ``ignore_index`` count
    nowhere; a class absent from the data shows as NaN in its per-class IoU rather than a false 0.
    """
    n = len(class_names)
    common = {"ignore_index": ignore_index, "validate_args": False}
    per_class = ClasswiseWrapper(
        MulticlassJaccardIndex(n, average="none", zero_division=float("nan"), **common),
        labels=list(class_names),
        prefix="iou/",
    )
    if binary:
        scores = {
            "iou": BinaryJaccardIndex(**common),
            "dice": BinaryF1Score(**common),
            "acc": BinaryAccuracy(**common),
        }
    else:
        scores = {
            "iou": MulticlassJaccardIndex(n, average="macro", **common),
            "dice": MulticlassF1Score(n, average="macro", **common),
            "acc": MulticlassAccuracy(n, average="micro", **common),
        }
    return MetricCollection({**scores, "iou_per_class": per_class})
