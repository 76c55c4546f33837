"""The fast post-processing and metric paths give what the code before them gave, to the bit.

``Old`` below is that code (``segsweep.instance.postprocess`` and ``.metrics`` as of commit 592b1ab,
docstrings dropped): every function, and a validation record as ``InstanceMetrics.update`` made it,
is compared with the current code on random maps and label images (ties, gaps in the ids, empty
images, objects on the border) and on the project's data (synthetic shapes, ISBI 2012 labels).
Equal means ``==`` on floats and byte-equal RLEs, not approximately equal.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import DATASETS, requires_dataset
from pycocotools import mask as coco_mask
from scipy import ndimage as ndi
from skimage.metrics import variation_of_information
from skimage.metrics._contingency_table import contingency_table
from skimage.segmentation import relabel_sequential, watershed

from segsweep.data.synthetic import render_shapes
from segsweep.instance import metrics as fast
from segsweep.instance.encoding import encode
from segsweep.instance.postprocess import (
    Instances,
    describe,
    from_labels,
    split_batch,
    split_objects,
)


class Old:
    """The code before the fast paths (commit 592b1ab), kept as the reference."""

    @staticmethod
    def sequential(labels):
        labels = np.asarray(labels, np.int64)
        if labels.size == 0 or labels.max(initial=0) > 4 * labels.size + 1024:
            return relabel_sequential(labels)[0].astype(np.int64)
        present = np.bincount(labels.ravel()) > 0
        present[0] = False
        return (np.cumsum(present) * present)[labels]

    @classmethod
    def drop_small_objects(cls, labels, min_size):
        if min_size > 1 and labels.any():
            sizes = np.bincount(labels.ravel())
            labels = np.where(sizes[labels] < min_size, 0, labels)
        return cls.sequential(labels)

    @classmethod
    def split_objects(cls, foreground, separator, encoding="core", method="watershed",
                      foreground_threshold=0.5, seed_threshold=0.5, min_size=0):
        mask = foreground > foreground_threshold
        if method == "components":
            return cls.drop_small_objects(ndi.label(mask)[0], min_size)
        if encoding == "boundary":
            seeds, elevation = mask & (separator < seed_threshold), separator
        else:
            seeds, elevation = mask & (separator > seed_threshold), -separator
        markers, count = ndi.label(seeds)
        labels = watershed(elevation, markers, mask=mask) if count else np.zeros(mask.shape, np.int64)
        leftover, extra = ndi.label(mask & (labels == 0))
        labels = np.where(leftover > 0, leftover + count, labels)
        return cls.drop_small_objects(labels, min_size)

    @classmethod
    def describe(cls, labels, foreground, class_probs=None):
        labels = cls.sequential(labels)
        n = int(labels.max())
        index = np.arange(1, n + 1)
        scores = np.asarray(ndi.mean(foreground, labels, index), np.float32) if n else np.zeros(0, np.float32)
        if class_probs is None or class_probs.shape[0] < 2 or n == 0:
            classes = np.ones(n, np.int64)
        else:
            votes = np.stack([ndi.sum(p, labels, index) for p in class_probs], axis=1)
            classes = votes.argmax(1).astype(np.int64) + 1
        return Instances(labels, classes, scores)

    @classmethod
    def from_labels(cls, labels, semantic=None, ignore_index=None):
        labels = cls.sequential(labels)
        n = int(labels.max())
        classes = np.ones(n, np.int64)
        if semantic is not None and n:
            semantic = np.asarray(semantic, np.int64)
            valid = (labels > 0) & (semantic > 0) & (semantic != ignore_index)
            num = int(semantic[valid].max(initial=1)) + 1
            votes = np.bincount(labels[valid] * num + semantic[valid], minlength=(n + 1) * num)
            votes = votes.reshape(n + 1, num)[1:]
            classes = np.where(votes.any(1), votes.argmax(1), 1).astype(np.int64)
        return Instances(labels, classes, np.ones(n, np.float32))

    @classmethod
    def overlaps(cls, true, pred):
        true, pred = cls.sequential(true), cls.sequential(pred)
        n_t, n_p = int(true.max(initial=0)), int(pred.max(initial=0))
        counts = np.bincount((true * (n_p + 1) + pred).ravel(), minlength=(n_t + 1) * (n_p + 1))
        counts = counts.reshape(n_t + 1, n_p + 1)
        return counts[1:, 1:], counts.sum(1)[1:], counts.sum(0)[1:]

    @classmethod
    def iou_matrix(cls, true, pred):
        inter, area_t, area_p = cls.overlaps(true, pred)
        return inter / np.maximum(area_t[:, None] + area_p[None, :] - inter, 1)

    @classmethod
    def object_matches(cls, true, pred):
        iou = cls.iou_matrix(true, pred)
        matched = iou > 0.5
        tp = int(matched.sum())
        return tp, iou.shape[1] - tp, iou.shape[0] - tp, float(iou[matched].sum())

    @classmethod
    def panoptic_counts(cls, true, pred):
        iou = cls.iou_matrix(true.labels, pred.labels)
        t_cls, p_cls = np.asarray(true.classes), np.asarray(pred.classes)
        matched = (iou > 0.5) & (t_cls[:, None] == p_cls[None, :])
        out = {}
        for c in np.union1d(t_cls, p_cls).tolist():
            rows, cols = t_cls == c, p_cls == c
            tp = int(matched[rows][:, cols].sum())
            iou_sum = float(iou[rows][:, cols][matched[rows][:, cols]].sum())
            out[int(c)] = np.array([tp, cols.sum() - tp, rows.sum() - tp, iou_sum], np.float64)
        return out

    @classmethod
    def aggregated_jaccard(cls, true, pred):
        true, pred = cls.sequential(true), cls.sequential(pred)
        inter, area_t, area_p = cls.overlaps(true, pred)
        if not len(area_t):
            return math.nan if not len(area_p) else 0.0
        if not len(area_p):
            return 0.0
        union = area_t[:, None] + area_p[None, :] - inter
        iou = inter / union
        ids, first = np.unique(pred.ravel(), return_index=True)
        order = np.argsort(first[ids > 0])
        best = order[iou[:, order].argmax(1)]
        rows = np.arange(len(area_t))
        paired = iou[rows, best] > 0
        taken = np.zeros(len(area_p), bool)
        taken[best[paired]] = True
        numerator = inter[rows[paired], best[paired]].sum()
        denominator = union[rows[paired], best[paired]].sum() + area_t[~paired].sum() + area_p[~taken].sum()
        return float(numerator / denominator)

    @classmethod
    def rand_and_voi(cls, true, pred):
        inside = np.asarray(true) != 0
        if not inside.any():
            return math.nan, math.nan
        inter, _, _ = cls.overlaps(np.asarray(true)[inside], np.asarray(pred)[inside] + 1)
        p = inter / inside.sum()
        are = 1 - (p**2).sum() / ((p.sum(0) ** 2).sum() / 2 + (p.sum(1) ** 2).sum() / 2)
        split, merge = variation_of_information(true, pred, ignore_labels=(0,))
        return float(are), float(split + merge)

    @staticmethod
    def rle(masks):
        return coco_mask.encode(np.asfortranarray(np.moveaxis(masks, 0, -1).astype(np.uint8)))

    @classmethod
    def object_masks(cls, labels):
        labels = cls.sequential(labels)
        return labels[None] == np.arange(1, int(labels.max(initial=0)) + 1)[:, None, None]

    @classmethod
    def record(cls, pred, target, key, rand_vi=True):
        """One entry of ``InstanceMetrics.records`` as ``update`` made it."""
        true, labels = np.asarray(target.labels), np.asarray(pred.labels)
        pred, target = pred._replace(labels=labels), target._replace(labels=true)
        detections = pred.detections or (cls.object_masks(labels), pred.classes, pred.scores)
        return {
            "key": str(key),
            "shape": true.shape,
            "aji": cls.aggregated_jaccard(true, labels),
            "agnostic": np.array(cls.object_matches(true, labels), np.float64),
            "panoptic": cls.panoptic_counts(target, pred),
            "rand": cls.rand_and_voi(true, labels) if rand_vi else None,
            "true": (cls.rle(cls.object_masks(true)), np.asarray(target.classes)),
            "pred": (cls.rle(np.asarray(detections[0], bool)), np.asarray(detections[1]), np.asarray(detections[2])),
        }


def assert_identical(old, new, where="value"):
    """Equal to the bit: same types of containers, same keys, arrays of the same dtype and values,
    floats ``==`` (NaN where NaN), RLE bytes equal."""
    if isinstance(old, dict):
        assert old.keys() == new.keys(), where
        for key in old:
            assert_identical(old[key], new[key], f"{where}[{key!r}]")
    elif isinstance(old, (list, tuple)):
        assert len(old) == len(new), where
        for k, (a, b) in enumerate(zip(old, new, strict=True)):
            assert_identical(a, b, f"{where}[{k}]")
    elif isinstance(old, np.ndarray):
        assert isinstance(new, np.ndarray) and old.dtype == new.dtype and old.shape == new.shape, where
        np.testing.assert_array_equal(old, new, err_msg=where, strict=True)
    elif isinstance(old, float) and math.isnan(old):
        assert isinstance(new, float) and math.isnan(new), where
    else:
        assert type(old) is type(new) and old == new, f"{where}: {old!r} != {new!r}"


# -- inputs ---------------------------------------------------------------------------------------
def random_maps(rng, size=48, levels=None):
    """Smooth random foreground and separator maps (float32), optionally quantised to ``levels``
    values so that the watershed meets plateaus and ties."""
    maps = []
    for sigma in (2.5, 1.5):
        x = ndi.gaussian_filter(rng.random((size, size)), sigma)
        x = (x - x.min()) / max(x.max() - x.min(), 1e-9)
        maps.append(np.round(x * levels) / levels if levels else x)
    return maps[0].astype(np.float32), maps[1].astype(np.float32)


def random_labels(rng, size=40, n=12, gaps=False):
    """Blobs with random ids (gaps and large ids when ``gaps``), some touching, some on the border."""
    labels = np.zeros((size, size), np.int64)
    for k in range(1, n + 1):
        r, c = rng.integers(0, size, 2)
        h, w = rng.integers(1, size // 3, 2)
        labels[r:r + h, c:c + w] = k
    if gaps:
        ids = np.concatenate([[0], rng.choice(10 * n, n, replace=False) + 1])
        labels = ids[labels]
    return labels


def perturbed(rng, labels):
    """A prediction of ``labels``: shifted, one object dropped, two merged, a spurious blob."""
    pred = np.roll(labels, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
    ids = np.unique(pred[pred > 0])
    if len(ids) > 2:
        pred[pred == ids[0]] = 0
        pred[pred == ids[1]] = ids[2]
    pred[:3, :4] = pred.max() + 1
    return pred


def isbi_labels(count=2, crop=256):
    """Cell interiors of ISBI 2012 slices as the data config reads them (4-connected components
    of 255, specks under 16 px dropped), cropped to ``crop`` px."""
    from PIL import Image

    out = []
    for path in sorted((DATASETS / "isbi2012" / "masks").glob("*"))[:count]:
        raw = np.asarray(Image.open(path))[:crop, :crop]
        labels = ndi.label(raw == 255)[0].astype(np.int64)
        out.append(np.where(np.bincount(labels.ravel())[labels] < 16, 0, labels))
    return out


def maps_of(labels, rng, noise=0.25):
    """Noisy probability maps of a label image through the task's own ``core`` targets."""
    target = encode(torch.from_numpy(labels)[None], "core")[0].numpy()
    noisy = ndi.gaussian_filter(target + noise * rng.standard_normal(target.shape), (0, 1, 1))
    return np.clip(noisy, 0, 1).astype(np.float32)


# -- post-processing --------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [None, 4])
@pytest.mark.parametrize("seed", range(6))
def test_split_and_describe_match_the_old_code_on_random_maps(seed, levels):
    rng = np.random.default_rng(seed)
    foreground, separator = random_maps(rng, levels=levels)
    class_probs = rng.dirichlet(np.ones(3), size=foreground.shape).transpose(2, 0, 1).astype(np.float32)
    for options in ({}, {"min_size": 8}, {"seed_threshold": 0.7, "min_size": 3}, {"seed_threshold": 1.1},
                    {"method": "components", "min_size": 5}, {"foreground_threshold": 0.2}):
        for encoding in ("core", "boundary"):
            old = Old.split_objects(foreground, separator, encoding, **options)
            new = split_objects(foreground, separator, encoding, **options)
            assert_identical(old, new, f"{encoding} {options}")
            for probs in (None, class_probs):
                assert_identical(tuple(Old.describe(old, foreground, probs)), tuple(describe(new, foreground, probs)))


@pytest.mark.parametrize("seed", range(4))
def test_describe_and_from_labels_match_the_old_code_on_any_ids(seed):
    rng = np.random.default_rng(seed)
    labels = random_labels(rng, gaps=True)
    foreground = rng.random(labels.shape).astype(np.float32)
    semantic = rng.integers(0, 4, labels.shape)
    semantic[rng.random(labels.shape) < 0.1] = 255
    assert_identical(tuple(Old.describe(labels, foreground)), tuple(describe(labels, foreground)))
    assert_identical(tuple(Old.from_labels(labels, semantic, 255)), tuple(from_labels(labels, semantic, 255)))
    assert_identical(tuple(Old.from_labels(labels)), tuple(from_labels(labels)))
    empty = np.zeros((5, 7), np.int64)
    assert_identical(tuple(Old.describe(empty, foreground[:5, :7])), tuple(describe(empty, foreground[:5, :7])))
    assert_identical(tuple(Old.from_labels(empty, empty)), tuple(from_labels(empty, empty)))


@pytest.mark.parametrize("workers", [None, 0, 1, 2, 3])
def test_split_batch_equals_the_calls_one_by_one(workers):
    rng = np.random.default_rng(1)
    maps = np.stack([np.stack(random_maps(rng, levels=8)) for _ in range(5)])
    expected = [split_objects(f, s, "core", min_size=4) for f, s in maps]
    got = split_batch(maps[:, 0], maps[:, 1], "core", workers=workers, min_size=4)
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        assert_identical(a, b)
    assert split_batch(maps[:0, 0], maps[:0, 1], workers=workers) == []


def test_split_batch_from_several_threads_at_once():
    """Validation of two tasks in one process (or a test runner's threads) share the pool."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(2)
    maps = np.stack([np.stack(random_maps(rng)) for _ in range(4)])
    expected = [split_objects(f, s) for f, s in maps]
    with ThreadPoolExecutor(3) as outer:
        results = list(outer.map(lambda _: split_batch(maps[:, 0], maps[:, 1], workers=2), range(6)))
    for result in results:
        for a, b in zip(expected, result, strict=True):
            assert_identical(a, b)


# -- metrics ------------------------------------------------------------------------------------
def assert_same_metrics(true: Instances, pred: Instances):
    """Every per-image metric function and the whole validation record, old against new."""
    t, p = true.labels, pred.labels
    assert_identical(Old.aggregated_jaccard(t, p), fast.aggregated_jaccard(t, p), "aji")
    assert_identical(Old.object_matches(t, p), fast.object_matches(t, p), "object_matches")
    assert_identical(Old.panoptic_counts(true, pred), fast.panoptic_counts(true, pred), "panoptic")
    assert_identical(Old.rand_and_voi(t, p), fast.rand_and_voi(t, p), "rand_and_voi")
    assert_identical(Old.iou_matrix(t, p), fast.iou_matrix(t, p), "iou_matrix")
    assert_identical(Old.overlaps(t, p), fast.overlaps(t, p), "overlaps")
    metric = fast.InstanceMetrics(rand_vi=True)
    metric.update([pred], [true], keys=["k"])
    assert_identical(Old.record(pred, true, "k"), metric.records[0], "record")


def with_classes(rng, labels, num_classes=3):
    labels = Old.sequential(labels)
    n = int(labels.max())
    return Instances(labels, rng.integers(1, num_classes + 1, n), rng.random(n).astype(np.float32))


@pytest.mark.parametrize("seed", range(8))
def test_per_image_metrics_match_the_old_code_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    true = random_labels(rng, n=int(rng.integers(1, 20)))
    pred = perturbed(rng, true)
    assert_same_metrics(with_classes(rng, true), with_classes(rng, pred))
    # the functions on raw ids (gaps, large ids), as a caller outside validation may pass them
    raw_true, raw_pred = random_labels(rng, gaps=True), random_labels(rng, gaps=True)
    for name in ("aggregated_jaccard", "object_matches", "rand_and_voi", "iou_matrix"):
        assert_identical(getattr(Old, name)(raw_true, raw_pred), getattr(fast, name)(raw_true, raw_pred), name)


def test_metrics_match_the_old_code_on_edge_cases():
    rng = np.random.default_rng(0)
    empty, full = np.zeros((6, 9), np.int64), np.full((6, 9), 4, np.int64)
    one = np.zeros((6, 9), np.int64)
    one[2:4, 3:8] = 1
    corner = np.zeros((6, 9), np.int64)
    corner[0, 0], corner[-1, -1], corner[-1, 0] = 1, 2, 3  # first pixel, last pixel, last row
    for t in (empty, full, one, corner):
        for p in (empty, full, one, corner):
            assert_same_metrics(with_classes(rng, t), with_classes(rng, p))


def test_aji_ties_go_to_the_prediction_whose_first_pixel_comes_first():
    """Equal IoUs (the slow path of ``Overlap.aji``), with ids numbered against raster order and
    the two candidates of different sizes, so that the choice changes the value."""
    true = np.zeros((6, 12), np.int64)
    true[1:5, 2:10] = 1  # 32 px
    true[5, :] = 2  # 12 px, overlaps nothing
    pred = np.zeros_like(true)
    pred[1:5, 0:4] = 3  # A, left: 16 px, 8 inside: IoU 8 / 40
    pred[1:5, 9], pred[1:4, 8], pred[1:4, 10] = 1, 1, 1  # B: 10 px, 7 inside: IoU 7 / 35, the same
    pred[0, 5:7] = 2  # first in raster order, overlaps nothing
    assert 8 / 40 == 7 / 35
    # A's first pixel comes first: 8 / (40 + 12 + B's 10 + 2); taking B would give 7 / 65.
    for p in (pred, np.where(pred == 3, 7, pred), np.array([0, 3, 2, 1])[pred]):
        assert fast.aggregated_jaccard(true, p) == Old.aggregated_jaccard(true, p) == 8 / 64
    rng = np.random.default_rng(3)
    for _ in range(50):  # many small objects on a small grid: plenty of equal IoUs
        t = rng.integers(0, 4, (6, 6)) * (rng.random((6, 6)) < 0.8)
        p = rng.integers(0, 5, (6, 6))
        assert_identical(Old.aggregated_jaccard(t, p), fast.aggregated_jaccard(t, p))


def test_first_pixels_are_the_raster_first_pixels():
    rng = np.random.default_rng(4)
    labels = Old.sequential(random_labels(rng, size=30, n=15))
    ids, first = np.unique(labels.ravel(), return_index=True)
    np.testing.assert_array_equal(fast._first_pixels(labels, int(labels.max())), first[ids > 0])


@pytest.mark.parametrize("seed", range(4))
def test_vi_table_is_scikit_images_contingency_table(seed):
    rng = np.random.default_rng(seed)
    true = Old.sequential(random_labels(rng, n=int(rng.integers(1, 15))))
    pred = Old.sequential(perturbed(rng, true))
    expected = contingency_table(true, pred, ignore_labels=(0,), normalize=True)
    got = fast.Overlap(true, pred)._vi_table()
    assert type(got) is type(expected) and got.shape == expected.shape
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), err_msg=name, strict=False)


@pytest.mark.parametrize("seed", range(5))
def test_label_rle_is_pycocotools_encode_of_the_masks(seed):
    rng = np.random.default_rng(seed)
    labels = Old.sequential(random_labels(rng, size=int(rng.integers(8, 40)), n=int(rng.integers(1, 25))))
    labels[0, 0], labels[-1, -1] = labels.max() + 1, labels.max() + 2  # objects on the first and last pixel
    labels = Old.sequential(labels)
    assert fast.label_rle(labels) == Old.rle(Old.object_masks(labels))
    full = np.ones((3, 4), np.int64)
    assert fast.label_rle(full) == Old.rle(Old.object_masks(full))
    assert fast.label_rle(np.zeros((3, 4), np.int64)) == [] == Old.rle(Old.object_masks(np.zeros((3, 4))))


def test_update_builds_no_full_size_mask_per_object(monkeypatch):
    """The point of ``label_rle``: (n, H, W) mask stacks were most of the update's time on ISBI."""

    def refuse(*args, **kwargs):
        raise AssertionError("dense object masks built")

    monkeypatch.setattr(fast, "_object_masks", refuse)
    monkeypatch.setattr(fast, "_rle", refuse)
    rng = np.random.default_rng(0)
    true = random_labels(rng)
    metric = fast.InstanceMetrics()
    metric.update([with_classes(rng, perturbed(rng, true))], [with_classes(rng, true)])
    assert len(metric.records) == 1


# -- whole validation epochs on the project's data -----------------------------------------------
def old_and_new_values(images, rand_vi=True):
    """Dataset metric values from the old records and from the new ``update``, through the same
    ``compute``."""
    new = fast.InstanceMetrics(rand_vi=rand_vi)
    old = fast.InstanceMetrics(rand_vi=rand_vi)
    for k, (foreground, separator, class_probs, true) in enumerate(images):
        for metric, post in ((old, Old), (new, None)):
            if post is Old:
                labels = Old.split_objects(foreground, separator, min_size=8)
                pred, target = Old.describe(labels, foreground, class_probs), Old.from_labels(true)
                metric.records.append(Old.record(pred, target, f"{k:03d}", rand_vi))
            else:
                labels = split_objects(foreground, separator, min_size=8)
                metric.update([describe(labels, foreground, class_probs)], [from_labels(true)], keys=[f"{k:03d}"])
    for a, b in zip(old.records, new.records, strict=True):
        assert_identical(a, b, "record")
    old._update_count = len(images)  # records filled directly: compute() need not warn
    return ({k: float(v) for k, v in old.compute().items()}, {k: float(v) for k, v in new.compute().items()})


def test_validation_on_synthetic_shapes_matches_the_old_code():
    rng = np.random.default_rng(0)
    images = []
    for seed in range(6):
        _, semantic, labels = render_shapes(seed, 96, num_classes=3)
        maps = maps_of(labels, rng)
        class_probs = np.stack([(semantic == c) + 0.3 * rng.random(semantic.shape) for c in (1, 2, 3)])
        images.append((maps[0], maps[1], class_probs.astype(np.float32), labels))
    old, new = old_and_new_values(images)
    assert_identical(old, new, "metrics")
    assert 0 < new["ap50"] < 1


@requires_dataset("isbi2012")
def test_validation_on_isbi_cells_matches_the_old_code():
    rng = np.random.default_rng(0)
    images = [(*maps_of(labels, rng, noise=0.35), None, labels) for labels in isbi_labels()]
    old, new = old_and_new_values(images)
    assert_identical(old, new, "metrics")
    assert 0 < new["ap50"] < 1 and 0 < new["are"] < 1


def test_split_batch_in_a_forked_child_after_the_pool_started():
    """A data-loader worker forked after validation started the pool gets a pool of its own."""
    import multiprocessing

    rng = np.random.default_rng(5)
    maps = np.stack([np.stack(random_maps(rng)) for _ in range(3)])
    expected = split_batch(maps[:, 0], maps[:, 1], workers=2)  # the parent's pool is running
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_split_in_child, (maps,)).get(timeout=60)
    for a, b in zip(expected, got, strict=True):
        assert_identical(a, b)


def _split_in_child(maps):
    return split_batch(maps[:, 0], maps[:, 1], workers=2)


def _git_has(revision: str) -> bool:
    import subprocess

    from conftest import ROOT

    try:
        return subprocess.run(["git", "cat-file", "-e", f"{revision}^{{commit}}"], cwd=ROOT,
                              capture_output=True).returncode == 0
    except OSError:
        return False


def test_bench_postprocess_runs_and_checks_the_values(make_cfg, tmp_path, monkeypatch, capsys):
    """scripts/bench_postprocess.py (docs/benchmarks.md) on an untrained checkpoint, one round."""
    import runpy
    import sys

    from conftest import ROOT, untrained_checkpoint

    bench = runpy.run_path(str(ROOT / "scripts" / "bench_postprocess.py"))
    if not _git_has(bench["BASELINE"]):
        pytest.skip(f"the old code's commit {bench['BASELINE']} is not in this checkout's history")
    checkpoint = untrained_checkpoint(make_cfg("task=instance", "data.splits.val.num_images=3"), tmp_path / "x.ckpt")
    monkeypatch.setattr(sys, "argv", ["bench_postprocess.py", "--checkpoint", checkpoint, "--rounds", "1",
                                      "--threads", "1", "--validate-rounds", "1"])
    runpy.run_path(str(ROOT / "scripts" / "bench_postprocess.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "same metric values to the bit in all 1 rounds of 3 variants" in out
    assert all(name in out for name in ("old ", "new ", "new+pool2 ", "split_objects", "label_rle")), out
    assert "trainer.validate: time/postprocess_fraction" in out
