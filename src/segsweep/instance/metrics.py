"""Instance metrics on label images: COCO mask AP, AJI, PQ, object F1, adapted Rand error, VI.

Every metric takes ``Instances`` (label image + class + score per object, see ``postprocess``) for
predictions and targets, so bottom-up and Mask R-CNN predictions are scored by the same code. The
definitions, with their references, are in ``docs/metrics.md``; in short (``t``: true objects,
``p``: predicted objects, IoU of two objects as pixel sets):

- ``ap``, ``ap50``, ``ap75``: COCO mask AP (torchmetrics ``MeanAveragePrecision``, faster_coco_eval)
  over all scored objects; ``Instances.detections`` (Mask R-CNN's overlapping masks) when given.
  0 when there are true objects but no prediction at all; NaN (undefined) without true objects.
  ``ap50_agnostic``: AP50 with every object one class (segmentation apart from classification).
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

import contextlib
import io
import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from faster_coco_eval.core import mask as coco_mask  # pycocotools' mask API (RLEs), same C code
from scipy import ndimage as ndi
from scipy import sparse
from skimage.metrics import variation_of_information
from torchmetrics import Metric, MetricCollection
from torchmetrics.detection import MeanAveragePrecision

from segsweep.instance.postprocess import Instances, _sequential, sequential

NAN = float("nan")


class Overlap:
    """What F1, PQ, AJI and Rand/VI all take from one image, from one pass over its pixels.

    ``counts[i, j]``: pixels of true id ``i`` and predicted id ``j`` (ids renumbered ``1..n`` in id
    order; row and column 0 are the background). Validation used to build this table three times
    per image (F1, PQ, AJI, each after renumbering both images again) plus once for Rand/VI; the
    metric functions below now share one. Every value is computed with the same operations on the
    same arrays as before, so results are equal to the bit (``tests/test_postprocess_speed.py``).
    """

    def __init__(self, true: np.ndarray, pred: np.ndarray):
        self.raw = (true, pred)
        self.true, counts_t = _sequential(true)
        self.pred, counts_p = _sequential(pred)
        n_t, n_p = len(counts_t) - 1, len(counts_p) - 1
        key = self.true * (n_p + 1) + self.pred
        self.counts = np.bincount(key.ravel(), minlength=(n_t + 1) * (n_p + 1)).reshape(n_t + 1, n_p + 1)
        self.inter = self.counts[1:, 1:]
        self.area_t, self.area_p = counts_t[1:], counts_p[1:]
        self._iou = self._matches = None

    @property
    def iou(self) -> np.ndarray:
        """Pairwise IoU ``(n_true, n_pred)``."""
        if self._iou is None:
            union = self.area_t[:, None] + self.area_p[None, :] - self.inter
            self._iou = self.inter / np.maximum(union, 1)
        return self._iou

    def matches(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairs at IoU > 0.5 ``(true index, pred index, IoU)`` in row-major order (each object has
        at most one: two would need IoUs summing > 1)."""
        if self._matches is None:
            rows, cols = np.nonzero(self.iou > 0.5)
            self._matches = rows, cols, self.iou[rows, cols]
        return self._matches

    def object_matches(self) -> tuple[int, int, int, float]:
        """``object_matches`` of the two images."""
        rows, _, ious = self.matches()
        tp = len(rows)
        return tp, len(self.area_p) - tp, len(self.area_t) - tp, float(ious.sum())

    def panoptic(self, true_classes: np.ndarray, pred_classes: np.ndarray) -> dict[int, np.ndarray]:
        """``panoptic_counts`` of the two images with these classes."""
        t_cls, p_cls = np.asarray(true_classes), np.asarray(pred_classes)
        rows, cols, ious = self.matches()
        pair_cls = np.where(t_cls[rows] == p_cls[cols], t_cls[rows], _NO_CLASS)
        out = {}
        for c in np.union1d(t_cls, p_cls).tolist():
            same = pair_cls == c  # matched pairs of class c, in the row-major order of the old sums
            tp = int(same.sum())
            out[int(c)] = np.array(
                [tp, (p_cls == c).sum() - tp, (t_cls == c).sum() - tp, float(ious[same].sum())], np.float64
            )
        return out

    def aji(self) -> float:
        """``aggregated_jaccard`` of the two images."""
        n_t, n_p = len(self.area_t), len(self.area_p)
        if not n_t:
            return NAN if not n_p else 0.0
        if not n_p:
            return 0.0
        iou, rows = self.iou, np.arange(n_t)
        best = iou.argmax(1)  # the first maximum in id order ...
        top = iou[rows, best]
        tied = np.flatnonzero((top > 0) & ((iou == top[:, None]).sum(1) > 1))
        if len(tied):  # ... unless tied: then the prediction whose first pixel comes first
            first = _first_pixels(self.pred, n_p)
            for r in tied.tolist():
                candidates = np.flatnonzero(iou[r] == top[r])
                best[r] = candidates[np.argmin(first[candidates])]
        paired = iou[rows, best] > 0
        taken = np.zeros(n_p, bool)
        taken[best[paired]] = True
        inter = self.inter[rows[paired], best[paired]]
        union = self.area_t[paired] + self.area_p[best[paired]] - inter
        numerator = inter.sum()
        denominator = union.sum() + self.area_t[~paired].sum() + self.area_p[~taken].sum()
        return float(numerator / denominator)

    def rand_and_voi(self) -> tuple[float, float]:
        """``rand_and_voi`` of the two images."""
        if not len(self.area_t):
            return NAN, NAN
        inside = self.counts[1:]  # true objects x (predicted background, predicted objects)
        # The segments present inside, in id order, C-ordered as before: the sums below add in
        # memory order, and column selection alone gives a Fortran-ordered copy.
        inter = np.ascontiguousarray(inside[:, inside.any(0)])
        p = inter / inside.sum()
        are = 1 - (p**2).sum() / ((p.sum(0) ** 2).sum() / 2 + (p.sum(1) ** 2).sum() / 2)
        true, pred = self.raw
        if self.true is true and self.pred is pred:  # ids already 1..n: the table is skimage's
            split, merge = variation_of_information(true, pred, table=self._vi_table())
        else:
            split, merge = variation_of_information(np.asarray(true), np.asarray(pred), ignore_labels=(0,))
        return float(are), float(split + merge)

    def _vi_table(self):
        """``skimage.metrics.contingency_table(true, pred, ignore_labels=(0,), normalize=True)``
        from ``counts``, equal to the bit, without its pass over every pixel.

        scikit-image puts ``1 / N`` (true background: 0) on each pixel and lets scipy sum the
        duplicates of a cell one after the other; a cumulative sum of ``1 / N`` makes the same
        additions in the same order, so the k-pixel cell gets ``cumsum[k - 1]``. Same sparsity
        (cells of true background that hold pixels are stored as zeros, as scipy does).
        """
        counts = self.counts
        cells = np.cumsum(np.full(int(counts[1:].max(initial=1)), 1.0 / counts[1:].sum()))
        present = counts != 0
        rows, cols = np.nonzero(present)
        k = counts[rows, cols]
        data = np.where(rows > 0, cells[np.minimum(k, len(cells)) - 1], 0.0)
        indptr = np.concatenate([[0], np.cumsum(present.sum(1))])
        return sparse.csr_matrix((data, cols, indptr), shape=counts.shape)


_NO_CLASS = np.iinfo(np.int64).min  # the class of a matched pair whose two classes differ


def _first_pixels(labels: np.ndarray, n: int) -> np.ndarray:
    """Raster index of each id's first pixel (``1..n`` -> entries ``0..n-1``): its bounding box's
    top row, there the leftmost pixel of that id. ``find_objects`` is one C pass over the image;
    ``np.unique(..., return_index=True)`` sorted all of it (still used for other than 2D)."""
    if labels.ndim != 2:
        ids, first = np.unique(labels.ravel(), return_index=True)
        return first[ids > 0]
    first = np.empty(n, np.int64)
    width = labels.shape[-1]
    for k, box in enumerate(ndi.find_objects(labels, max_label=n)):
        row = box[0].start
        first[k] = row * width + box[1].start + int(np.argmax(labels[row, box[1]] == k + 1))
    return first


def overlaps(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise intersections ``(n_true, n_pred)`` of two label images (any ids, renumbered
    ``1..n`` in id order) and the object areas."""
    table = Overlap(true, pred)
    return table.inter, table.area_t, table.area_p


def iou_matrix(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``(n_true, n_pred)`` of the objects of two label images."""
    return Overlap(true, pred).iou


def object_matches(true: np.ndarray, pred: np.ndarray) -> tuple[int, int, int, float]:
    """Class-agnostic ``(tp, fp, fn, sum of matched IoUs)`` at IoU > 0.5."""
    return Overlap(true, pred).object_matches()


def panoptic_counts(true: Instances, pred: Instances) -> dict[int, np.ndarray]:
    """Per class ``c``: ``[tp, fp, fn, sum of matched IoUs]``, a true and a predicted object
    matching when both are of class ``c`` and their IoU > 0.5 (Kirillov et al. 2019)."""
    return Overlap(true.labels, pred.labels).panoptic(true.classes, pred.classes)


def aggregated_jaccard(true: np.ndarray, pred: np.ndarray) -> float:
    """AJI of one image (Kumar et al. 2017, unmatched objects as in HoVer-Net's ``get_fast_aji``).

    Each true object takes the prediction of highest IoU with it (a prediction may be taken by
    several); the pair adds its intersection to the numerator and its union to the denominator.
    A true object that overlaps no prediction adds only its own area; predictions taken by none add
    theirs. Ties in IoU go to the prediction whose first pixel comes first in raster order, so the
    value does not depend on how ids are numbered. NaN when the image has no object at all.
    """
    return Overlap(true, pred).aji()


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
    return Overlap(true, pred).rand_and_voi()


def _rle(masks: np.ndarray) -> list[dict]:
    """COCO run-length encoding of ``(n, H, W)`` boolean masks: compact per-image records."""
    return coco_mask.encode(np.asfortranarray(np.moveaxis(masks, 0, -1).astype(np.uint8)))


def label_rle(labels: np.ndarray) -> list[dict]:
    """COCO RLEs of the objects ``1..n`` of a label image (ids already ``1..n``): the same records
    as ``_rle`` of their ``n`` full-size masks, byte for byte, from the label image's own runs.

    ``_rle`` needs an ``(H, W, n)`` mask stack: 75 MB for the ~300 cells of one 512 px ISBI slice,
    written and scanned once per object. Here one pass finds the runs of equal ids down the
    columns (COCO's order); each object's runs, with the gaps between them, are its RLE counts,
    which pycocotools compresses (``frPyObjects``, in C).
    """
    labels = np.asarray(labels)
    height, width = labels.shape
    n = int(labels.max(initial=0))
    if n == 0:
        return []
    flat = labels.ravel(order="F")
    starts = np.flatnonzero(np.concatenate([[True], flat[1:] != flat[:-1]]))
    ends = np.append(starts[1:], flat.size)
    ids = flat[starts]
    keep = ids > 0
    starts, ends, ids = starts[keep], ends[keep], ids[keep]
    order = np.argsort(ids, kind="stable")  # by object, each object's runs in pixel order
    starts, ends, ids = starts[order], ends[order], ids[order]
    first = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
    previous_end = np.concatenate([[0], ends[:-1]])
    previous_end[first] = 0  # an object's first run follows its leading zeros
    # counts: zeros before run 1, run 1, zeros before run 2, run 2, ..., trailing zeros (if any)
    pairs = np.stack([starts - previous_end, ends - starts], axis=1).astype(np.uint32)
    last = np.append(first[1:], len(ids)) - 1
    trailing = flat.size - ends[last]
    objects = []
    for k, (a, b) in enumerate(zip(first.tolist(), (last + 1).tolist(), strict=True)):
        counts = pairs[a:b].ravel()
        if trailing[k]:
            counts = np.append(counts, np.uint32(trailing[k]))
        objects.append({"size": [height, width], "counts": counts})
    return coco_mask.frPyObjects(objects, height, width)


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


def _detections(pred: Instances, labels: np.ndarray) -> tuple:
    """The record's scored detections: Mask R-CNN's (possibly overlapping) masks when given, else
    the objects of the label image (``labels``: ids ``1..n``)."""
    if pred.detections:
        masks, classes, scores = pred.detections
        return _rle(np.asarray(masks, bool)), np.asarray(classes), np.asarray(scores)
    return label_rle(labels), np.asarray(pred.classes), np.asarray(pred.scores)


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
            table = Overlap(true, labels)  # renumbers both and counts their overlaps once
            self.records.append({
                "key": str(key),
                "shape": true.shape,
                "aji": table.aji(),
                "agnostic": np.array(table.object_matches(), np.float64),
                "panoptic": table.panoptic(target.classes, pred.classes),
                "rand": table.rand_and_voi() if self.rand_vi else None,
                "true": (label_rle(table.true), np.asarray(target.classes)),
                "pred": _detections(pred, table.pred),
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
        keys = ("ap", "ap50", "ap75", "ap50_agnostic")
        if not sum(len(r["true"][1]) for r in records):
            return dict.fromkeys(keys, NAN)  # AP is undefined without true objects
        if not sum(len(r["pred"][1]) for r in records):
            return dict.fromkeys(keys, 0.0)  # torchmetrics would say -1 here
        # Up to 1000 detections per image: ISBI slices and nuclei images hold hundreds of objects.
        coco = MeanAveragePrecision(iou_type="segm", backend="faster_coco_eval",
                                    max_detection_thresholds=[1, 100, 1000])
        for record in records:
            _add_image(coco, record)
        # What MeanAveragePrecision.compute does (its helpers, torchmetrics 1.x as the states above),
        # with the COCO datasets made once for both evaluations: building them is half of each's cost.
        backend = coco._coco_backend
        preds, target = backend._get_coco_datasets(
            coco.groundtruth_labels, coco.groundtruth_box, coco.groundtruth_mask, coco.groundtruth_crowds,
            coco.groundtruth_area, coco.detection_labels, coco.detection_box, coco.detection_mask,
            coco.detection_scores, iou_type=("segm",), average="macro",
        )
        # IoU thresholds as pycocotools makes them (float64 linspace): torchmetrics' own are float32,
        # which moves matches whose IoU sits exactly on a threshold (0.6, 0.65, ...). Class-agnostic
        # AP50: the same datasets with categories ignored (COCOeval's useCats=0), IoU 0.5 alone (AP
        # at one threshold does not depend on the others).
        recall_points = coco.rec_thresholds
        aware = _evaluate(backend, target, preds, np.linspace(0.5, 0.95, 10), recall_points, use_categories=True)
        agnostic = _evaluate(backend, target, preds, np.array([0.5]), recall_points, use_categories=False)
        return {"ap": aware[0], "ap50": aware[1], "ap75": aware[2], "ap50_agnostic": agnostic[1]}


def _evaluate(backend, target, preds, iou_thresholds: np.ndarray, recall_points: list[float],
              use_categories: bool) -> list[float]:
    """COCOeval's ``stats[:3]`` (AP, AP50, AP75, up to 1000 detections per image) as torchmetrics
    computes them, NaN where undefined (COCO: -1)."""
    # faster_coco_eval logs its whole 12-line summary at INFO on every evaluation: keep epochs
    # readable by quieting it for this call only (the user's logging set-up stays theirs).
    coco_log = logging.getLogger("faster_coco_eval")
    level = coco_log.level
    coco_log.setLevel(max(level, logging.WARNING))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation = backend.cocoeval(target, preds, iouType="segm")
            evaluation.params.iouThrs = np.asarray(iou_thresholds, np.float64)
            evaluation.params.recThrs = np.array(recall_points, dtype=np.float64)
            evaluation.params.maxDets = [1, 100, 1000]
            evaluation.params.useCats = int(use_categories)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
    finally:
        coco_log.setLevel(level)
    return [float(v) if v >= 0 else NAN for v in evaluation.stats[:3]]


def _mean(values: list[float]) -> float:
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else NAN


def instance_metrics(rand_vi: bool = False) -> MetricCollection:
    """All instance metrics in one collection (``clone(prefix=...)`` per stage);
    ``update(preds, targets, keys)`` takes ``Instances``."""
    return MetricCollection({"instance": InstanceMetrics(rand_vi=rand_vi)})
