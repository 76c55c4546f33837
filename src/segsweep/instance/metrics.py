"""Instance metrics on label images: COCO mask AP, AJI, PQ, object F1, adapted Rand error, VI.

Every metric takes ``Instances`` (label image + class + score per object, see ``postprocess``) for
predictions and targets, so bottom-up and Mask R-CNN predictions are scored by the same code.
Definitions (``t``: true objects, ``p``: predicted objects, IoU of two objects as pixel sets):

- ``ap``, ``ap50``, ``ap75``: COCO mask average precision (torchmetrics ``MeanAveragePrecision``,
  ``iou_type="segm"``, faster_coco_eval backend), objects ranked by score.
- ``precision``, ``recall``, ``f1``: a true and a predicted object match when IoU > 0.5 (such a
  match is unique); TP = matches, FP = unmatched predictions, FN = unmatched true objects; summed
  over the dataset before dividing.
- ``pq = sq * rq`` (Kirillov et al. 2019): ``sq`` = mean IoU of the matches, ``rq`` = F1 above.
- ``aji`` (Kumar et al. 2017): each true object takes the prediction of highest IoU with it;
  ``sum |t & p| / (sum |t | p| + area of the predictions never taken)``, per image, then the
  mean over images.
- ``are`` (adapted Rand error) and ``voi`` (variation of information, split + merge) from
  scikit-image, true background ignored as in the ISBI 2012 challenge; per image, mean over images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from skimage.metrics import adapted_rand_error, variation_of_information
from torchmetrics import Metric, MetricCollection
from torchmetrics.detection import MeanAveragePrecision

from segsweep.instance.postprocess import Instances, sequential

# faster_coco_eval logs its whole 12-line summary at INFO on every compute: keep epochs readable.
logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)


def overlaps(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise intersections ``(n_true, n_pred)`` of two label images (any ids) and the areas."""
    true, pred = sequential(true), sequential(pred)
    n_t, n_p = int(true.max()), int(pred.max())
    counts = np.bincount((true * (n_p + 1) + pred).ravel(), minlength=(n_t + 1) * (n_p + 1))
    counts = counts.reshape(n_t + 1, n_p + 1)
    return counts[1:, 1:], counts.sum(1)[1:], counts.sum(0)[1:]


def iou_matrix(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``(n_true, n_pred)`` of the objects of two label images."""
    return _iou(*overlaps(true, pred))


def object_matches(true: np.ndarray, pred: np.ndarray) -> tuple[int, int, int, float]:
    """``(tp, fp, fn, sum of matched IoUs)`` at IoU > 0.5."""
    return _matches(*overlaps(true, pred))


def aggregated_jaccard(true: np.ndarray, pred: np.ndarray) -> float:
    """AJI of one image (NaN when it has neither true nor predicted objects)."""
    return _aji(*overlaps(true, pred))


# The same three from one ``overlaps`` result: InstanceScores computes it once per image.
def _iou(inter: np.ndarray, area_t: np.ndarray, area_p: np.ndarray) -> np.ndarray:
    return inter / np.maximum(area_t[:, None] + area_p[None, :] - inter, 1)


def _matches(inter, area_t, area_p) -> tuple[int, int, int, float]:
    iou = _iou(inter, area_t, area_p)
    matched = iou > 0.5
    tp = int(matched.sum())
    return tp, iou.shape[1] - tp, iou.shape[0] - tp, float(iou[matched].sum())


def _aji(inter, area_t, area_p) -> float:
    if not len(area_t):
        return float("nan") if not len(area_p) else 0.0
    if not len(area_p):
        return 0.0
    union = area_t[:, None] + area_p[None, :] - inter
    best = (inter / union).argmax(1)  # a prediction may be taken by several true objects
    rows = np.arange(len(area_t))
    unused = np.setdiff1d(np.arange(len(area_p)), best)
    return float(inter[rows, best].sum() / (union[rows, best].sum() + area_p[unused].sum()))


def rand_and_voi(true: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Adapted Rand error and variation of information, true background ignored."""
    if not np.any(true):
        return float("nan"), float("nan")
    are = adapted_rand_error(true, pred, ignore_labels=(0,))[0]
    split, merge = variation_of_information(true, pred, ignore_labels=(0,))
    return float(are), float(split + merge)


def _labels(item: Instances | torch.Tensor | np.ndarray) -> np.ndarray:
    labels = item.labels if isinstance(item, Instances) else item
    return labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)


class InstanceScores(Metric):
    """AJI, PQ/SQ/RQ, object precision/recall/F1 at IoU 0.5 and, with ``rand_vi``, ARE and VOI."""

    full_state_update = False

    def __init__(self, rand_vi: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.rand_vi = rand_vi
        for name in (
            "tp",
            "fp",
            "fn",
            "iou_sum",
            "aji_sum",
            "aji_count",
            "are_sum",
            "voi_sum",
            "rand_count",
        ):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Sequence[Instances], targets: Sequence[Instances]) -> None:
        for pred, target in zip(preds, targets, strict=True):
            pred, true = _labels(pred), _labels(target)
            pairs = overlaps(true, pred)
            tp, fp, fn, iou_sum = _matches(*pairs)
            self.tp += tp
            self.fp += fp
            self.fn += fn
            self.iou_sum += iou_sum
            aji = _aji(*pairs)
            if not np.isnan(aji):
                self.aji_sum += aji
                self.aji_count += 1
            if self.rand_vi:
                are, voi = rand_and_voi(true, pred)
                if not np.isnan(are):
                    self.are_sum += are
                    self.voi_sum += voi
                    self.rand_count += 1

    def compute(self) -> dict[str, torch.Tensor]:
        tp, fp, fn = self.tp, self.fp, self.fn
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        precision = tp / (tp + fp) if tp + fp else nan
        recall = tp / (tp + fn) if tp + fn else nan
        rq = tp / (tp + (fp + fn) / 2) if tp + fp + fn else nan
        sq = self.iou_sum / tp if tp else torch.tensor(0.0, dtype=torch.float64)
        out = {
            "aji": self.aji_sum / self.aji_count if self.aji_count else nan,
            "pq": sq * rq,
            "sq": sq,
            "rq": rq,
            "precision": precision,
            "recall": recall,
            "f1": rq,
        }
        if self.rand_vi:
            count = self.rand_count if self.rand_count else nan
            out.update(are=self.are_sum / count, voi=self.voi_sum / count)
        return {k: torch.as_tensor(v, dtype=torch.float32) for k, v in out.items()}


class MaskAP(Metric):
    """COCO mask AP / AP50 / AP75 of label-image instances (torchmetrics MeanAveragePrecision)."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Up to 1000 detections per image: ISBI slices and nuclei images hold hundreds of objects.
        self.map = MeanAveragePrecision(
            iou_type="segm", backend="faster_coco_eval", max_detection_thresholds=[1, 100, 1000]
        )

    @staticmethod
    def _as_coco(item: Instances, scored: bool) -> dict[str, torch.Tensor]:
        labels = torch.as_tensor(_labels(item))
        ids = labels.unique()
        ids = ids[ids > 0]  # ids 1..n by the Instances contract; any ids still work
        out = {
            "masks": labels[None] == ids[:, None, None],
            "labels": torch.as_tensor(item.classes).long(),
        }
        if scored:
            out["scores"] = torch.as_tensor(item.scores).float()
        return out

    def update(self, preds: Sequence[Instances], targets: Sequence[Instances]) -> None:
        self.map.update(
            [self._as_coco(p, True) for p in preds], [self._as_coco(t, False) for t in targets]
        )

    def compute(self) -> dict[str, torch.Tensor]:
        values = self.map.compute()
        return {"ap": values["map"], "ap50": values["map_50"], "ap75": values["map_75"]}

    def reset(self) -> None:
        super().reset()
        self.map.reset()


def instance_metrics(rand_vi: bool = False) -> MetricCollection:
    """All instance metrics in one collection; ``update(preds, targets)`` takes ``Instances``."""
    return MetricCollection(
        {"scores": InstanceScores(rand_vi=rand_vi), "mask_ap": MaskAP()}, compute_groups=False
    )
