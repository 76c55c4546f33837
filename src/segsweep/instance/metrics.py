"""Instance metrics on label images: COCO mask AP, AJI, PQ, object F1, adapted Rand error, VI.

Every metric takes ``Instances`` (label image + class + score per object, see ``postprocess``) for
predictions and targets, so bottom-up and Mask R-CNN predictions are scored by the same code. The
definitions, with their references, are in ``docs/metrics.md``; in short (``t``: true objects,
``p``: predicted objects, IoU of two objects as pixel sets):

- ``ap``, ``ap50``, ``ap75``: COCO mask AP (torchmetrics ``MeanAveragePrecision``, faster_coco_eval)
  over all scored objects; ``Instances.detections`` (Mask R-CNN's overlapping masks) when given.
  0 when there are true objects but no prediction at all; NaN (undefined) without true objects.
- ``precision``, ``recall``, ``f1``: class-agnostic matches at IoU > 0.5, summed over the dataset.
- ``pq``, ``sq``, ``rq`` (Kirillov et al. 2019): matched within each class, per class over the
  dataset, then the mean over classes with any object; ``pq_agnostic``: all objects one class.
- ``aji`` (Kumar et al. 2017, as HoVer-Net's ``get_fast_aji``): per image, mean over images.
- ``are``, ``voi``: ISBI 2012 adapted Rand error and variation of information (split + merge, in
  bits), pixels of true background left out; per image, mean over images.

Under DDP each rank keeps one record per image and the records are gathered in one collective
(ranks may hold different numbers of images), then ordered by image key, so every value equals a
single-process evaluation exactly, whatever the sharding or batching.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as coco_mask
from skimage.metrics import variation_of_information
from torchmetrics import Metric, MetricCollection
from torchmetrics.detection import MeanAveragePrecision

from segsweep.instance.postprocess import Instances, sequential

NAN = float("nan")


def overlaps(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise intersections ``(n_true, n_pred)`` of two label images (any ids, renumbered
    ``1..n`` in id order) and the object areas."""
    true, pred = sequential(true), sequential(pred)
    n_t, n_p = int(true.max(initial=0)), int(pred.max(initial=0))
    counts = np.bincount((true * (n_p + 1) + pred).ravel(), minlength=(n_t + 1) * (n_p + 1))
    counts = counts.reshape(n_t + 1, n_p + 1)
    return counts[1:, 1:], counts.sum(1)[1:], counts.sum(0)[1:]


def iou_matrix(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``(n_true, n_pred)`` of the objects of two label images."""
    inter, area_t, area_p = overlaps(true, pred)
    return inter / np.maximum(area_t[:, None] + area_p[None, :] - inter, 1)


def _matched(iou: np.ndarray, same_class: np.ndarray | None = None) -> np.ndarray:
    """Pairs matching at IoU > 0.5: each object has at most one (two would need IoUs summing > 1)."""
    matched = iou > 0.5
    return matched if same_class is None else matched & same_class


def object_matches(true: np.ndarray, pred: np.ndarray) -> tuple[int, int, int, float]:
    """Class-agnostic ``(tp, fp, fn, sum of matched IoUs)`` at IoU > 0.5."""
    iou = iou_matrix(true, pred)
    matched = _matched(iou)
    tp = int(matched.sum())
    return tp, iou.shape[1] - tp, iou.shape[0] - tp, float(iou[matched].sum())


def panoptic_counts(true: Instances, pred: Instances) -> dict[int, np.ndarray]:
    """Per class ``c``: ``[tp, fp, fn, sum of matched IoUs]``, a true and a predicted object
    matching when both are of class ``c`` and their IoU > 0.5 (Kirillov et al. 2019)."""
    iou = iou_matrix(true.labels, pred.labels)
    t_cls, p_cls = np.asarray(true.classes), np.asarray(pred.classes)
    matched = _matched(iou, t_cls[:, None] == p_cls[None, :])
    out = {}
    for c in np.union1d(t_cls, p_cls).tolist():
        rows, cols = t_cls == c, p_cls == c
        tp = int(matched[rows][:, cols].sum())
        iou_sum = float(iou[rows][:, cols][matched[rows][:, cols]].sum())
        out[int(c)] = np.array([tp, cols.sum() - tp, rows.sum() - tp, iou_sum], np.float64)
    return out


def aggregated_jaccard(true: np.ndarray, pred: np.ndarray) -> float:
    """AJI of one image (Kumar et al. 2017, unmatched objects as in HoVer-Net's ``get_fast_aji``).

    Each true object takes the prediction of highest IoU with it (a prediction may be taken by
    several); the pair adds its intersection to the numerator and its union to the denominator.
    A true object that overlaps no prediction adds only its own area; predictions taken by none add
    theirs. Ties in IoU go to the prediction whose first pixel comes first in raster order, so the
    value does not depend on how ids are numbered. NaN when the image has no object at all.
    """
    true, pred = sequential(true), sequential(pred)
    inter, area_t, area_p = overlaps(true, pred)
    if not len(area_t):
        return NAN if not len(area_p) else 0.0
    if not len(area_p):
        return 0.0
    union = area_t[:, None] + area_p[None, :] - inter
    iou = inter / union
    # Order the predictions by first pixel: argmax then breaks ties the same for any numbering.
    ids, first = np.unique(pred.ravel(), return_index=True)
    first_pixel = first[ids > 0]  # a prediction may cover every pixel (no background id 0)
    order = np.argsort(first_pixel)
    best = order[iou[:, order].argmax(1)]
    rows = np.arange(len(area_t))
    paired = iou[rows, best] > 0
    taken = np.zeros(len(area_p), bool)
    taken[best[paired]] = True
    numerator = inter[rows[paired], best[paired]].sum()
    denominator = union[rows[paired], best[paired]].sum() + area_t[~paired].sum() + area_p[~taken].sum()
    return float(numerator / denominator)


def rand_and_voi(true: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Adapted Rand error (ISBI 2012) and variation of information (bits) of one image.

    Over the pixels of true objects (true background left out, as in the challenge), with
    ``p_ij`` the share of them in true object ``i`` and predicted segment ``j`` (predicted
    background is one segment like any other), ``t``/``s`` the row/column sums:
    ``are = 1 - sum p_ij^2 / (sum s_j^2 / 2 + sum t_i^2 / 2)`` (Arganda-Carreras et al. 2015).
    Written here because scikit-image's ``adapted_rand_error`` counts pixel pairs without a
    pixel's pair with itself (``sum n_ij^2 - n``), which is not that formula. ``voi`` = H(true |
    pred) + H(pred | true), scikit-image's, same pixels. NaN, NaN without true objects.
    """
    inside = np.asarray(true) != 0
    if not inside.any():
        return NAN, NAN
    inter, _, _ = overlaps(np.asarray(true)[inside], np.asarray(pred)[inside] + 1)  # pred 0 -> 1
    p = inter / inside.sum()
    are = 1 - (p**2).sum() / ((p.sum(0) ** 2).sum() / 2 + (p.sum(1) ** 2).sum() / 2)
    split, merge = variation_of_information(true, pred, ignore_labels=(0,))
    return float(are), float(split + merge)


def _rle(masks: np.ndarray) -> list[dict]:
    """COCO run-length encoding of ``(n, H, W)`` boolean masks: compact per-image records."""
    return coco_mask.encode(np.asfortranarray(np.moveaxis(masks, 0, -1).astype(np.uint8)))


def _object_masks(labels: np.ndarray) -> np.ndarray:
    labels = sequential(labels)
    return labels[None] == np.arange(1, int(labels.max(initial=0)) + 1)[:, None, None]


def _add_image(coco: MeanAveragePrecision, record: dict) -> None:
    """What ``MeanAveragePrecision.update`` stores for one image, from the record's RLEs.

    ``update`` takes dense masks and RLE-encodes them again: decoding ours only for that doubled
    the epoch-end cost on ISBI-sized images. These are the states of torchmetrics 1.x (pinned
    below 2); ``tests/test_instance_metrics.py`` checks the values against pycocotools.
    """

    def masks(rles: list[dict]) -> tuple:
        return tuple((tuple(rle["size"]), rle["counts"]) for rle in rles)

    (pred_rles, pred_classes, scores), (true_rles, true_classes) = record["pred"], record["true"]
    coco.detection_mask.append(masks(pred_rles))
    coco.detection_labels.append(torch.as_tensor(np.asarray(pred_classes), dtype=torch.long))
    coco.detection_scores.append(torch.as_tensor(np.asarray(scores), dtype=torch.float32))
    labels = torch.as_tensor(np.asarray(true_classes), dtype=torch.long)
    coco.groundtruth_mask.append(masks(true_rles))
    coco.groundtruth_labels.append(labels)
    coco.groundtruth_crowds.append(torch.zeros_like(labels))
    coco.groundtruth_area.append(torch.zeros_like(labels))


def _labels(item: Instances) -> np.ndarray:
    labels = item.labels
    return labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)


class InstanceMetrics(Metric):
    """All instance metrics of a dataset, from per-image records (see the module docstring).

    ``update(preds, targets, keys)``: ``keys`` name the images (file stems); values are computed
    over the images in key order, which makes them independent of batching and DDP sharding.
    """

    full_state_update = False

    def __init__(self, rand_vi: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.rand_vi = rand_vi
        self.add_state("records", default=[], dist_reduce_fx=None)

    def update(self, preds: Sequence[Instances], targets: Sequence[Instances],
               keys: Sequence[str] | None = None) -> None:
        keys = keys if keys is not None else [f"#{len(self.records) + i:09d}" for i in range(len(preds))]
        for pred, target, key in zip(preds, targets, keys, strict=True):
            true, labels = _labels(target), _labels(pred)
            pred, target = pred._replace(labels=labels), target._replace(labels=true)
            detections = pred.detections or (_object_masks(labels), pred.classes, pred.scores)
            self.records.append({
                "key": str(key),
                "shape": true.shape,
                "aji": aggregated_jaccard(true, labels),
                "agnostic": np.array(object_matches(true, labels), np.float64),
                "panoptic": panoptic_counts(target, pred),
                "rand": rand_and_voi(true, labels) if self.rand_vi else None,
                "true": (_rle(_object_masks(true)), np.asarray(target.classes)),
                "pred": (_rle(np.asarray(detections[0], bool)), np.asarray(detections[1]),
                         np.asarray(detections[2])),
            })

    def _sync_dist(self, dist_sync_fn=None, process_group=None) -> None:
        # torchmetrics gathers list states one entry at a time, so ranks holding different numbers
        # of images would make different numbers of collective calls: gather all records at once.
        group = process_group or self.process_group
        gathered = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, self.records, group=group)
        self.records = [record for part in gathered for record in part]

    def compute(self) -> dict[str, torch.Tensor]:
        records = sorted(self.records, key=lambda r: r["key"])
        tp, fp, fn, iou_sum = np.sum([r["agnostic"] for r in records], axis=0) if records else np.zeros(4)
        out = {
            "precision": tp / (tp + fp) if tp + fp else NAN,
            "recall": tp / (tp + fn) if tp + fn else NAN,
            "f1": tp / (tp + (fp + fn) / 2) if tp + fp + fn else NAN,
            "pq_agnostic": iou_sum / (tp + (fp + fn) / 2) if tp + fp + fn else NAN,
            **self._panoptic(records),
            "aji": _mean([r["aji"] for r in records]),
            **self._mask_ap(records),
        }
        if self.rand_vi:
            out["are"] = _mean([r["rand"][0] for r in records])
            out["voi"] = _mean([r["rand"][1] for r in records])
        return {k: torch.tensor(v, dtype=torch.float32) for k, v in out.items()}

    @staticmethod
    def _panoptic(records: list[dict]) -> dict[str, float]:
        per_class: dict[int, np.ndarray] = {}
        for record in records:
            for c, counts in record["panoptic"].items():
                per_class[c] = per_class.get(c, 0) + counts
        pq, sq, rq = [], [], []
        for tp, fp, fn, iou_sum in (per_class[c] for c in sorted(per_class)):
            if tp + fp + fn:  # a class with no object anywhere is left out of the mean
                rq.append(tp / (tp + (fp + fn) / 2))
                sq.append(iou_sum / tp if tp else 0.0)
                pq.append(sq[-1] * rq[-1])
        return {"pq": _mean(pq), "sq": _mean(sq), "rq": _mean(rq)}

    @staticmethod
    def _mask_ap(records: list[dict]) -> dict[str, float]:
        if not sum(len(r["true"][1]) for r in records):
            return {"ap": NAN, "ap50": NAN, "ap75": NAN}  # AP is undefined without true objects
        if not sum(len(r["pred"][1]) for r in records):
            return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}  # torchmetrics would say -1 here
        # Up to 1000 detections per image: ISBI slices and nuclei images hold hundreds of objects.
        # IoU thresholds as pycocotools makes them (float64 linspace): torchmetrics' own are float32,
        # which moves matches whose IoU sits exactly on a threshold (0.6, 0.65, ...).
        coco = MeanAveragePrecision(iou_type="segm", backend="faster_coco_eval",
                                    iou_thresholds=np.linspace(0.5, 0.95, 10).tolist(),
                                    max_detection_thresholds=[1, 100, 1000])
        for record in records:
            _add_image(coco, record)
        coco._update_count = len(records)  # states filled directly: compute() need not warn
        # faster_coco_eval logs its whole 12-line summary at INFO on every compute: keep epochs
        # readable by quieting it for this call only (the user's logging set-up stays theirs).
        coco_log = logging.getLogger("faster_coco_eval")
        level = coco_log.level
        coco_log.setLevel(max(level, logging.WARNING))
        try:
            values = coco.compute()
        finally:
            coco_log.setLevel(level)
        return {name: float(values[key]) if float(values[key]) >= 0 else NAN
                for name, key in (("ap", "map"), ("ap50", "map_50"), ("ap75", "map_75"))}


def _mean(values: list[float]) -> float:
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else NAN


def instance_metrics(rand_vi: bool = False) -> MetricCollection:
    """All instance metrics in one collection (``clone(prefix=...)`` per stage);
    ``update(preds, targets, keys)`` takes ``Instances``."""
    return MetricCollection({"instance": InstanceMetrics(rand_vi=rand_vi)})
