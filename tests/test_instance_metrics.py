"""Instance metrics against hand-computed values; encodings round-trip through post-processing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segsweep.data.synthetic import render_shapes
from segsweep.instance.encoding import ENCODINGS, depth_map, encode
from segsweep.instance.metrics import (
    aggregated_jaccard,
    instance_metrics,
    object_matches,
    rand_and_voi,
)
from segsweep.instance.postprocess import describe, from_labels, paste_masks, sequential, split_objects


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
    # merge: H(true | pred) = 1 bit, nothing split. Rand over pixel pairs (n = 32 pixels):
    # precision = (sum n_ij^2 - n) / (sum_pred s_j^2 - n) = 480 / 992, recall = 480 / 480.
    assert got["voi"] == pytest.approx(1.0)  # bits
    assert got["are"] == pytest.approx(1 - 2 * (480 / 992) / (480 / 992 + 1))


def test_split_object():
    true = (square_pair() > 0).astype(np.int64)  # one 4x8 object
    pred = square_pair()  # predicted as two halves
    assert object_matches(true, pred) == (0, 2, 1, 0.0)
    assert aggregated_jaccard(true, pred) == pytest.approx(
        16 / (32 + 16)
    )  # unused half adds its area
    are, voi = rand_and_voi(true, pred)
    assert voi == pytest.approx(1.0) and are == pytest.approx(1 - 2 * (480 / 992) / (1 + 480 / 992))


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
