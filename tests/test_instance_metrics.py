"""Instance metrics against references written from their definitions (not from the code under
test), hand-worked cases and properties; encodings round-trip through post-processing."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segsweep.data.synthetic import render_shapes
from segsweep.instance.encoding import ENCODINGS, depth_map, encode
from segsweep.instance.metrics import (
    aggregated_jaccard,
    instance_metrics,
    object_matches,
    rand_and_voi,
)
from segsweep.instance.postprocess import (
    Instances,
    describe,
    from_labels,
    paste_masks,
    sequential,
    split_objects,
)


def square_pair() -> np.ndarray:
    """Two touching 4x4 objects, A (id 5) left of B (id 9), in a 6x10 image."""
    true = np.zeros((6, 10), np.int64)
    true[1:5, 1:5], true[1:5, 5:9] = 5, 9
    return true


def scores(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    metrics = instance_metrics(rand_vi=True)
    metrics.update([describe(pred, (pred > 0).astype(float))], [from_labels(true)])
    return {k: float(v) for k, v in metrics.compute().items()}


def test_perfect():
    true = square_pair()
    got = scores(true, np.where(true == 5, 1, np.where(true == 9, 2, 0)))  # other ids, same objects
    assert got["ap"] == got["ap50"] == got["ap75"] == 1
    assert got["aji"] == got["pq"] == got["sq"] == got["rq"] == got["f1"] == 1
    assert got["are"] == 0 and got["voi"] == 0


def test_shifted_object():
    true = np.zeros((6, 8), np.int64)
    true[1:5, 1:5] = 1
    pred = np.roll(true, 1, axis=1)  # 12 shared of 20 pixels: IoU 0.6, a match
    got = scores(true, pred)
    assert got["f1"] == got["precision"] == got["recall"] == 1
    assert got["pq"] == pytest.approx(0.6) and got["sq"] == pytest.approx(0.6)
    assert got["aji"] == pytest.approx(12 / 20)
    assert got["ap50"] == pytest.approx(1) and got["ap75"] == 0
    further = np.roll(true, 2, axis=1)  # IoU 8 / 24: no match
    assert object_matches(true, further) == (0, 1, 1, 0.0)
    assert aggregated_jaccard(true, further) == pytest.approx(8 / 24)


def test_merged_objects():
    true = square_pair()
    pred = (true > 0).astype(np.int64)  # one object over both: IoU 16 / 32 = 0.5 each, not > 0.5
    got = scores(true, pred)
    assert (got["precision"], got["recall"], got["pq"]) == (0, 0, 0)
    # COCO matches at IoU >= 0.5: one of two objects found at precision 1 -> 51 of 101 recall points
    assert got["ap50"] == pytest.approx(51 / 101) and got["ap75"] == 0
    assert got["aji"] == pytest.approx((16 + 16) / (32 + 32))
    # merge: H(true | pred) = 1 bit, nothing split. ISBI Rand on the 32 object pixels: p_ij = 1/2
    # twice, s = (1), t = (1/2, 1/2): 1 - (1/4 + 1/4) / (1 / 2 + (1/4 + 1/4) / 2) = 1/3.
    assert got["voi"] == pytest.approx(1.0)  # bits
    assert got["are"] == pytest.approx(1 / 3)


def test_split_object():
    true = (square_pair() > 0).astype(np.int64)  # one 4x8 object
    pred = square_pair()  # predicted as two halves
    assert object_matches(true, pred) == (0, 2, 1, 0.0)
    assert aggregated_jaccard(true, pred) == pytest.approx(
        16 / (32 + 16)
    )  # unused half adds its area
    are, voi = rand_and_voi(true, pred)
    # p_ij = 1/2 twice, t = (1), s = (1/2, 1/2): the same 1/3 as the merge, mirrored.
    assert voi == pytest.approx(1.0) and are == pytest.approx(1 / 3)


def test_mostly_right_with_extra_object():
    true = square_pair()
    pred = true.copy()
    pred[5, 9] = 3  # a 1-pixel false positive
    got = scores(true, pred)
    assert got["precision"] == pytest.approx(2 / 3) and got["recall"] == 1
    assert got["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1))
    assert got["aji"] == pytest.approx(32 / 33)


def test_empty_images():
    empty = np.zeros((4, 4), np.int64)
    assert math.isnan(aggregated_jaccard(empty, empty))
    assert object_matches(empty, empty) == (0, 0, 0, 0.0)


def test_depth_map_of_a_square():
    labels = torch.zeros(1, 7, 7, dtype=torch.long)
    labels[0, 1:6, 1:6] = 4
    depth = depth_map(labels)[0]
    assert depth[3, 3] == 3 and depth[1, 1] == 1 and depth[0, 0] == 0 and depth[2, 3] == 2


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_encoding_round_trip_on_clean_synthetic_data(encoding):
    """labels -> targets -> post-processing -> labels gives the objects back (touching ones too)."""
    labels = np.stack(
        [
            render_shapes(seed, 96, overlap_fraction=0.0, touching_fraction=0.5)[2]
            for seed in range(6)
        ]
    )
    assert any(
        (np.diff(lab, axis=1) != 0)[(lab[:, 1:] > 0) & (lab[:, :-1] > 0)].any() for lab in labels
    ), "no contact"
    targets = encode(torch.from_numpy(labels), encoding).numpy()
    assert targets.shape == (6, 2, 96, 96)
    metrics = instance_metrics()
    preds = [describe(split_objects(t[0], t[1], encoding, min_size=8), t[0]) for t in targets]
    metrics.update(preds, [from_labels(lab) for lab in labels])
    got = metrics.compute()
    assert float(got["ap50"]) == 1.0 and float(got["f1"]) == 1.0
    assert float(got["aji"]) > 0.95


def test_unknown_encoding_is_named():
    with pytest.raises(ValueError, match="task.encoding"):
        encode(torch.zeros(1, 4, 4, dtype=torch.long), "flow")


def test_paste_masks_highest_score_wins():
    masks = torch.zeros(3, 1, 4, 4)
    masks[0, 0, :, :2] = 0.9  # score 0.6
    masks[1, 0, :, 1:3] = 0.9  # score 0.9: wins the shared column
    masks[2, 0, 0, 0] = 0.2  # below the mask threshold: dropped
    out = paste_masks(masks, torch.tensor([0.6, 0.9, 0.99]), torch.tensor([1, 2, 1]))
    assert out.labels.max() == 2 and len(out.scores) == 2
    winner = out.labels[0, 1]
    assert out.scores[winner - 1] == pytest.approx(0.9) and out.classes[winner - 1] == 2
    assert (out.labels[:, 0] > 0).all() and (out.labels[:, 3] == 0).all()


def test_describe_votes_classes_over_each_object():
    labels = np.zeros((4, 6), np.int64)
    labels[:, :3], labels[:, 3:] = 1, 2
    class_probs = np.zeros((2, 4, 6))  # channel k = object class k + 1
    class_probs[0, :, :3], class_probs[1, :, :3] = 0.8, 0.2
    class_probs[0, :, 3:], class_probs[1, :, 3:] = 0.3, 0.7
    foreground = np.where(labels == 1, 0.9, 0.6)
    out = describe(labels, foreground, class_probs)
    assert out.classes.tolist() == [1, 2]
    assert out.scores == pytest.approx([0.9, 0.6])


@pytest.mark.parametrize("high", [50, 2**40])  # small ids: lookup table; huge sparse ids: fallback
def test_sequential_matches_scikit_image(high):
    from skimage.segmentation import relabel_sequential

    labels = np.random.default_rng(0).integers(0, high, size=(16, 16))
    labels[:4] = 0
    np.testing.assert_array_equal(sequential(labels), relabel_sequential(labels)[0])


# -- references written from the definitions, with plain loops over objects ------------------------
def _objects(labels: np.ndarray) -> list[np.ndarray]:
    """Object masks in raster order of their first pixel (the tie rule of the AJI definition)."""
    ids, first = np.unique(labels.ravel(), return_index=True)
    return [labels == i for i, _ in sorted(zip(ids, first, strict=True), key=lambda x: x[1]) if i != 0]


def reference_aji(true: np.ndarray, pred: np.ndarray) -> float:
    """Kumar et al. 2017 with HoVer-Net's handling of unmatched objects (``get_fast_aji``)."""
    trues, preds = _objects(true), _objects(pred)
    if not trues:
        return math.nan if not preds else 0.0
    inter = union = 0
    used = set()
    for t in trues:
        best, best_iou = None, 0.0
        for k, p in enumerate(preds):
            iou = (t & p).sum() / (t | p).sum()
            if iou > best_iou:
                best, best_iou = k, iou
        if best is None:
            union += t.sum()  # overlaps nothing: only its own area
        else:
            inter += (t & preds[best]).sum()
            union += (t | preds[best]).sum()
            used.add(best)
    union += sum(p.sum() for k, p in enumerate(preds) if k not in used)
    return inter / union


def reference_pq(images: list[tuple[Instances, Instances]], per_class: bool = True) -> float:
    """Kirillov et al. 2019: per class, a true and a predicted segment of that class match when
    their IoU > 0.5; PQ_c = sum of matched IoUs / (TP + FP/2 + FN/2); PQ = mean over classes."""
    totals = {}
    for true, pred in images:
        t_objs = [(m, c if per_class else 1) for m, c in zip(_by_id(true.labels), true.classes, strict=True)]
        p_objs = [(m, c if per_class else 1) for m, c in zip(_by_id(pred.labels), pred.classes, strict=True)]
        for c in {c for _, c in t_objs + p_objs}:
            ts, ps = [m for m, k in t_objs if k == c], [m for m, k in p_objs if k == c]
            ious = [(t & p).sum() / (t | p).sum() for t in ts for p in ps]
            matched = [iou for iou in ious if iou > 0.5]
            tp, iou_sum, fp, fn = len(matched), sum(matched), len(ps) - len(matched), len(ts) - len(matched)
            old = totals.get(c, (0, 0.0, 0, 0))
            totals[c] = (old[0] + tp, old[1] + iou_sum, old[2] + fp, old[3] + fn)
    values = [s / (tp + fp / 2 + fn / 2) for tp, s, fp, fn in totals.values() if tp + fp + fn]
    return sum(values) / len(values) if values else math.nan


def _by_id(labels: np.ndarray) -> list[np.ndarray]:
    return [labels == i for i in range(1, int(labels.max()) + 1)]


def reference_rand_and_vi(true: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """ISBI 2012 (Arganda-Carreras et al. 2015): over the pixels of true objects, p_ij = share in
    true object i and predicted segment j (0 included), are = 1 - sum p^2 / (sum s^2/2 + sum t^2/2);
    VI = H(T|S) + H(S|T) = 2 H(T, S) - H(T) - H(S) in bits."""
    inside = true != 0
    n = inside.sum()
    pairs = {}
    for t, s in zip(true[inside].tolist(), pred[inside].tolist(), strict=True):
        pairs[(t, s)] = pairs.get((t, s), 0) + 1
    p = {k: v / n for k, v in pairs.items()}
    t_marg, s_marg = {}, {}
    for (t, s), v in p.items():
        t_marg[t] = t_marg.get(t, 0) + v
        s_marg[s] = s_marg.get(s, 0) + v
    are = 1 - sum(v * v for v in p.values()) / (
        sum(v * v for v in s_marg.values()) / 2 + sum(v * v for v in t_marg.values()) / 2)

    def entropy(dist):
        return -sum(v * math.log2(v) for v in dist.values() if v > 0)

    return are, 2 * entropy(p) - entropy(t_marg) - entropy(s_marg)


def coco_reference(images: list[tuple[Instances, Instances]]) -> tuple[float, float, float]:
    """AP, AP50, AP75 from pycocotools' COCOeval (the reference implementation), each predicted
    object (or ``detections`` entry) one scored detection, up to 1000 per image."""
    gt = {"images": [], "annotations": [], "categories": [{"id": c} for c in range(1, 6)]}
    dets = []
    for image_id, (true, pred) in enumerate(images, start=1):
        gt["images"].append({"id": image_id, "height": true.labels.shape[0], "width": true.labels.shape[1]})
        for mask, c in zip(_by_id(true.labels), true.classes, strict=True):
            rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": int(c),
                                      "segmentation": rle, "area": float(mask.sum()), "iscrowd": 0,
                                      "bbox": list(coco_mask.toBbox(rle))})
        masks, classes, scores = pred.detections or (_by_id(pred.labels), pred.classes, pred.scores)
        for mask, c, score in zip(masks, classes, scores, strict=True):
            rle = coco_mask.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
            dets.append({"image_id": image_id, "category_id": int(c), "segmentation": rle, "score": float(score)})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        evaluation = COCOeval(coco_gt, coco_gt.loadRes(dets), "segm")
        evaluation.params.maxDets = [1, 100, 1000]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return tuple(float(v) for v in evaluation.stats[:3])


def imperfect_predictions(seed: int) -> list[tuple[Instances, Instances]]:
    """Synthetic images (3 classes) and predictions with every kind of error: shifted objects, a
    dropped one, two merged, a spurious blob, some wrong classes, scores from a seeded RNG."""
    rng = np.random.default_rng(seed)
    images = []
    for k in range(3):
        _, semantic, labels = render_shapes((seed, k), 64, num_classes=3)
        true = from_labels(labels, semantic)
        pred = np.roll(labels, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
        ids = np.unique(labels[labels > 0])
        if len(ids) > 2:
            pred[pred == ids[0]] = 0  # dropped
            pred[pred == ids[1]] = ids[2]  # merged
        pred[:5, :5] = labels.max() + 1  # spurious
        pred = sequential(pred)
        n = int(pred.max())
        classes = np.where(rng.random(n) < 0.2, rng.integers(1, 4, n), 0)
        for i in range(n):  # the class under most of the object, unless drawn wrong above
            if not classes[i]:
                votes = np.bincount(semantic[pred == i + 1], minlength=4)[1:]
                classes[i] = votes.argmax() + 1
        images.append((true, Instances(pred, classes.astype(np.int64), rng.random(n).astype(np.float32))))
    return images


def metric_values(images: list[tuple[Instances, Instances]], keys=None) -> dict[str, float]:
    metrics = instance_metrics(rand_vi=True)
    metrics.update([p for _, p in images], [t for t, _ in images], keys=keys)
    return {k: float(v) for k, v in metrics.compute().items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_the_references(seed):
    images = imperfect_predictions(seed)
    got = metric_values(images)
    assert (got["ap"], got["ap50"], got["ap75"]) == pytest.approx(coco_reference(images), abs=1e-6)
    assert 0 < got["ap50"] < 1
    assert got["aji"] == pytest.approx(np.mean([reference_aji(t.labels, p.labels) for t, p in images]))
    assert got["pq"] == pytest.approx(reference_pq(images))
    assert got["pq_agnostic"] == pytest.approx(reference_pq(images, per_class=False))
    assert got["pq"] != pytest.approx(got["pq_agnostic"])  # wrong classes cost only the per-class PQ
    one_class = [(t._replace(classes=np.ones_like(t.classes)), p._replace(classes=np.ones_like(p.classes)))
                 for t, p in images]
    assert got["ap50_agnostic"] == pytest.approx(coco_reference(one_class)[1], abs=1e-6)
    rand = [reference_rand_and_vi(t.labels, p.labels) for t, p in images]
    assert got["are"] == pytest.approx(np.mean([r[0] for r in rand]))
    assert got["voi"] == pytest.approx(np.mean([r[1] for r in rand]))


def test_aji_ignores_how_predictions_are_numbered():
    """A true object that overlaps no prediction adds only its own area (the issue's case)."""
    true = np.zeros((4, 12), np.int64)
    true[:, 0:4], true[:, 8:12] = 1, 2  # A (16 px) and B (16 px)
    inside_a, elsewhere = np.zeros_like(true, bool), np.zeros_like(true, bool)
    inside_a[:, 0:3], elsewhere[:, 5:7] = True, True  # P (12 px) inside A; Q (8 px) on nothing
    # 12 / (|A u P| + |B| + |Q|) = 12 / (16 + 16 + 8), whichever id P and Q carry.
    for p_id, q_id in ((1, 2), (2, 1)):
        pred = np.where(inside_a, p_id, np.where(elsewhere, q_id, 0))
        assert aggregated_jaccard(true, pred) == pytest.approx(12 / 40)
        assert reference_aji(true, pred) == pytest.approx(12 / 40)


def test_aji_breaks_ties_by_position_not_by_id():
    """Two predictions of equal IoU with one true object: the same AJI for both numberings."""
    true = np.zeros((4, 8), np.int64)
    true[:, 2:6] = 1
    left, right = np.zeros_like(true, bool), np.zeros_like(true, bool)
    left[:, 0:4], right[:, 4:8] = True, True  # IoU 8/24 each
    values = [aggregated_jaccard(true, np.where(left, a, np.where(right, b, 0))) for a, b in ((1, 2), (2, 1))]
    assert values == [8 / (24 + 16)] * 2  # the left one is taken; the right one adds its 16 px


def test_per_class_pq_by_hand():
    """A (class 1) found with IoU 0.8, B (class 2) found with IoU 0.6 but labelled class 1."""
    true = np.zeros((10, 20), np.int64)
    true[0:10, 0:5], true[0:10, 10:15] = 1, 2  # 50 px each
    pred = np.zeros_like(true)
    pred[0:8, 0:5] = 1  # 40 px inside A: IoU 0.8
    pred[0:6, 10:15] = 2  # 30 px inside B: IoU 0.6
    images = [(Instances(true, np.array([1, 2]), np.ones(2)), Instances(pred, np.array([1, 1]), np.ones(2)))]
    got = metric_values(images)
    # class 1: TP 1 (0.8), FP 1 -> 0.8 / 1.5; class 2: FN 1 -> 0. Class-agnostic: 1.4 / 2.
    assert got["pq"] == pytest.approx((0.8 / 1.5 + 0) / 2) == reference_pq(images)
    assert got["sq"] == pytest.approx((0.8 + 0) / 2) and got["rq"] == pytest.approx((1 / 1.5 + 0) / 2)
    assert got["pq_agnostic"] == pytest.approx(0.7) and got["f1"] == 1


def test_rand_error_and_vi_follow_the_isbi_definition_by_hand():
    """True: A (4 px), B (2 px), background; predicted: A split 3 + 1, B merged with the 1."""
    true = np.array([[1, 1, 1, 1, 2, 2, 0, 0]])
    pred = np.array([[5, 5, 5, 7, 7, 7, 0, 5]])
    # 6 object pixels: p = {(A,5): 3/6, (A,7): 1/6, (B,7): 2/6}; t = (4/6, 2/6); s = (3/6, 3/6).
    # are = 1 - (9+1+4)/36 / ((9+9)/36/2 + (16+4)/36/2) = 1 - 14/19.
    # VI = 2 H(p) - H(t) - H(s), with H in bits.
    h = lambda *q: -sum(x * math.log2(x) for x in q)  # noqa: E731
    expected_vi = 2 * h(3 / 6, 1 / 6, 2 / 6) - h(4 / 6, 2 / 6) - h(3 / 6, 3 / 6)
    assert rand_and_voi(true, pred) == pytest.approx((1 - 14 / 19, expected_vi))
    assert reference_rand_and_vi(true, pred) == pytest.approx((1 - 14 / 19, expected_vi))
    assert all(math.isnan(v) for v in rand_and_voi(np.zeros_like(true), pred))  # no true object


def test_values_do_not_depend_on_ids_or_on_image_order():
    images = imperfect_predictions(3)
    rng = np.random.default_rng(7)

    def renumber(item: Instances) -> Instances:
        perm = np.concatenate([[0], rng.permutation(int(item.labels.max())) + 1])
        order = np.argsort(perm[1:])  # new id k + 1 holds old id order[k] + 1
        return Instances(perm[item.labels], item.classes[order], item.scores[order])

    keys = ["a", "b", "c"]
    renumbered = [(renumber(t), renumber(p)) for t, p in images]
    expected = metric_values(images, keys)
    assert metric_values(renumbered, keys) == expected
    assert metric_values(renumbered[::-1], keys[::-1]) == expected


def test_perfect_prediction_scores_one_and_empty_scores_zero():
    images = imperfect_predictions(4)
    perfect = metric_values([(t, Instances(t.labels, t.classes, np.ones(len(t.classes)))) for t, _ in images])
    for name in ("ap", "ap50", "ap75", "ap50_agnostic", "aji", "pq", "sq", "rq", "pq_agnostic", "precision",
                 "recall", "f1"):
        assert perfect[name] == 1, name
    assert perfect["are"] == 0 and perfect["voi"] == pytest.approx(0, abs=1e-6)
    empty = metric_values([(t, from_labels(np.zeros_like(t.labels))) for t, _ in images])
    for name in ("ap", "ap50", "ap75", "ap50_agnostic", "aji", "pq", "pq_agnostic", "recall", "f1"):
        assert empty[name] == 0, name  # no detection is AP 0, never torchmetrics' -1
    assert math.isnan(empty["precision"])  # nothing predicted: precision undefined


def test_without_true_objects_ap_is_undefined():
    blank = from_labels(np.zeros((8, 8), np.int64))
    got = metric_values([(blank, from_labels(np.eye(8, dtype=np.int64)))])
    assert all(math.isnan(got[k]) for k in ("ap", "ap50", "ap75", "ap50_agnostic", "recall"))
    assert got["aji"] == 0 and got["precision"] == 0


def test_class_agnostic_ap50_by_hand():
    """Two true objects, A of class 1 and B of class 2, each predicted with its exact mask.

    Classes swapped (A said 2, B said 1): per class, the one detection overlaps nothing of its
    class (IoU 0), so AP50 = (0 + 0) / 2 = 0, while with classes ignored both masks match: 1.
    One class wrong (A 1 at score 0.9, B 1 at 0.8): class 1 ranks A (TP, precision 1 at recall 1)
    then B (FP): AP 1; class 2 has a true object and no detection: AP 0; AP50 = 0.5, agnostic 1.
    """
    true = np.zeros((8, 16), np.int64)
    true[:, :8], true[:, 8:] = 1, 2
    target = from_labels(true)._replace(classes=np.array([1, 2]))
    for classes, aware in (([2, 1], 0.0), ([1, 1], 0.5)):
        pred = Instances(true, np.array(classes), np.array([0.9, 0.8], np.float32))
        got = metric_values([(target, pred)])
        assert got["ap50"] == pytest.approx(aware) and coco_reference([(target, pred)])[1] == pytest.approx(aware)
        assert got["ap50_agnostic"] == 1


def test_mask_rcnn_detections_are_ranked_for_ap_beyond_the_display_threshold():
    """Low-score detections stay in AP (COCO keeps them), not in the label image."""
    true = np.zeros((8, 16), np.int64)
    true[:, :8], true[:, 8:] = 1, 2
    masks = torch.zeros(3, 1, 8, 16)
    masks[0, 0, :, :8] = 0.9  # object 1, score 0.9
    masks[1, 0, :, 8:] = 0.9  # object 2, score 0.3: under the 0.5 display threshold
    masks[2, 0, :4, :] = 0.9  # a false positive across both, score 0.2
    pred = paste_masks(masks, torch.tensor([0.9, 0.3, 0.2]), torch.tensor([1, 1, 1]))
    assert pred.labels.max() == 1 and len(pred.detections[0]) == 3
    images = [(from_labels(true), pred)]
    got = metric_values(images)
    assert got["ap50"] == pytest.approx(1.0) and coco_reference(images)[1] == pytest.approx(1.0)
    assert got["recall"] == 0.5  # the label image holds only the detection above 0.5


def test_an_undefined_ap_is_null_in_metrics_json_and_never_ranked(tmp_path):
    """A job whose AP is undefined (NaN: no true object) ranks below a job with AP 0, unranked."""
    import json

    import yaml

    from segsweep.jobs.run import write_metrics
    from segsweep.reporting import collect

    for num, ap50 in ((0, math.nan), (1, 0.0)):
        job = tmp_path / f"{num}_job"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={num}"]))
        history = [{"epoch": 0, "step": 1, "val/ap50": ap50}]
        write_metrics(job, {"status": "completed", "monitor": "val/ap50", "final": {"val/ap50": ap50},
                                 "best": {}, "history": history, "job_num": num, "overrides": [f"seed={num}"]})
    assert json.loads((tmp_path / "0_job" / "metrics.json").read_text())["final"]["val/ap50"] is None
    table = collect(tmp_path, metric="val/ap50", mode="max")
    assert table["job"].tolist() == ["1_job", "0_job"]
    assert table["rank"].tolist()[0] == 1 and table["rank"].isna().tolist() == [False, True]


def test_aji_of_a_prediction_that_covers_every_pixel():
    # One true object of 4 pixels in a 4x4 image; one predicted object over all 16 pixels:
    # AJI = |intersection| / |union| = 4 / 16 (Kumar et al. 2017, worked by hand).
    true = np.zeros((4, 4), np.int64)
    true[:2, :2] = 1
    pred = np.full((4, 4), 7, np.int64)
    assert aggregated_jaccard(true, pred) == pytest.approx(4 / 16)
