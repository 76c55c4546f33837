"""Metrics against values computed by hand on tiny label maps."""

from __future__ import annotations

import math

import pytest
import torch

from segsweep.metrics import segmentation_metrics

IGNORE = 255


def compute(preds, target, class_names, binary):
    metrics = segmentation_metrics(class_names, IGNORE, binary=binary)
    metrics.update(torch.as_tensor(preds), torch.as_tensor(target))
    return {k: v.item() for k, v in metrics.compute().items()}


def test_semantic_metrics_by_hand():
    preds = [[0, 0, 1, 1], [2, 2, 0, 1]]
    target = [[0, 1, 1, 1], [IGNORE, 2, 0, 0]]
    # Counting the 7 non-ignored pixels: class a: TP 2, FP 1, FN 1; b: TP 2, FP 1, FN 1; c: TP 1.
    out = compute(preds, target, ["a", "b", "c"], binary=False)
    assert out["iou/a"] == pytest.approx(2 / 4) and out["iou/b"] == pytest.approx(2 / 4)
    assert out["iou/c"] == pytest.approx(1.0)
    assert out["iou"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert out["dice"] == pytest.approx((4 / 6 + 4 / 6 + 1) / 3)
    assert out["acc"] == pytest.approx(5 / 7)


def test_binary_iou_is_the_object_class():
    preds = [[1, 1, 0, 0], [1, 0, 0, 0]]
    target = [[1, 0, 0, 0], [1, 1, IGNORE, 0]]
    # object: TP 2, FP 1, FN 1 -> IoU 2/4, Dice 4/6; background: TP 3, FP 1, FN 1 -> 3/5.
    out = compute(preds, target, ["background", "object"], binary=True)
    assert out["iou"] == pytest.approx(0.5) and out["dice"] == pytest.approx(4 / 6)
    assert out["iou/object"] == pytest.approx(0.5) and out["iou/background"] == pytest.approx(3 / 5)
    assert out["acc"] == pytest.approx(5 / 7)


def test_class_absent_everywhere_is_nan_and_left_out_of_the_mean():
    out = compute([[0, 1, 1]], [[0, 1, 0]], ["a", "b", "c"], binary=False)
    assert math.isnan(out["iou/c"])
    assert out["iou"] == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_ignored_pixels_change_nothing():
    target = torch.tensor([[0, 1, IGNORE, IGNORE]])
    a = compute([[0, 1, 0, 0]], target, ["a", "b"], binary=False)
    b = compute([[0, 1, 1, 1]], target, ["a", "b"], binary=False)
    assert a == b


def reference(preds, target, n: int) -> dict[str, float]:
    """From the definitions, over non-ignored pixels: IoU_c = TP/(TP+FP+FN), Dice_c =
    2TP/(2TP+FP+FN), macro means over the classes present in prediction or target; accuracy =
    share of pixels right."""
    valid = target != IGNORE
    p, t = preds[valid], target[valid]
    out = {}
    for c in range(n):
        tp, fp, fn = ((p == c) & (t == c)).sum(), ((p == c) & (t != c)).sum(), ((p != c) & (t == c)).sum()
        out[c] = (tp / (tp + fp + fn), 2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else None
    present = [v for v in out.values() if v is not None]
    return {"iou": sum(v[0] for v in present) / len(present), "dice": sum(v[1] for v in present) / len(present),
            "acc": (p == t).mean(), **{f"iou/{c}": v[0] if v else math.nan for c, v in out.items()}}


@pytest.mark.parametrize("seed", range(4))
def test_semantic_metrics_match_the_definition_on_random_maps(seed):
    """4 classes, one never present, ~10% ignored pixels, two batches accumulated."""
    gen = torch.Generator().manual_seed(seed)
    preds = torch.randint(0, 3, (2, 2, 9, 7), generator=gen)
    target = torch.randint(0, 3, (2, 2, 9, 7), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.1] = IGNORE
    metrics = segmentation_metrics([str(c) for c in range(4)], IGNORE, binary=False)
    for p, t in zip(preds, target, strict=True):
        metrics.update(p, t)
    got = {k: v.item() for k, v in metrics.compute().items()}
    expected = reference(preds.numpy(), target.numpy(), 4)
    for name, value in expected.items():
        assert (math.isnan(got[name]) and math.isnan(value)) or got[name] == pytest.approx(value), name
