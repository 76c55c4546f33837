"""Built-in synthetic shapes: deterministic, consistent targets, touching and occluded objects."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage
from skimage.measure import regionprops

from segsweep.data import SyntheticShapes
from segsweep.data.synthetic import SHAPES, render_shapes

SAMPLES = [render_shapes(seed, 128) for seed in range(20)]


def adjacent_pairs(inst: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of different instances that share a 4-connected border."""
    pairs = set()
    for a, b in ((inst[:, :-1], inst[:, 1:]), (inst[:-1], inst[1:])):
        hit = (a > 0) & (b > 0) & (a != b)
        pairs |= {tuple(sorted(p)) for p in zip(a[hit].tolist(), b[hit].tolist(), strict=True)}
    return pairs


def bitten(samples) -> int:
    """Convex shapes (discs, rectangles) clear of the frame that lost a concave bite: occluded."""
    return sum(
        sem[inst == r.label][0] in (1, 2)
        and r.solidity < 0.9
        and min(r.bbox[:2]) > 0
        and r.bbox[2] < inst.shape[0]
        and r.bbox[3] < inst.shape[1]
        for _, sem, inst in samples
        for r in regionprops(inst)
    )


def test_same_seed_same_arrays_other_seed_differs():
    for x, y in zip(render_shapes(7, 128), SAMPLES[7], strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(SAMPLES[0][0], SAMPLES[1][0])
    train, val = SyntheticShapes(5, seed=0), SyntheticShapes(5, seed=1)
    train_images = [train.load(i).image for i in range(5)]
    assert all(not np.array_equal(a, val.load(i).image) for a in train_images for i in range(5))
    assert val.load(3).name == "synthetic_1_00003"


@pytest.mark.parametrize("size", [128, (96, 64)])
def test_shapes_and_dtypes(size):
    image, semantic, inst = render_shapes(3, size, num_classes=5)
    shape = (size, size) if isinstance(size, int) else size
    assert image.shape == (*shape, 3) and image.dtype == np.uint8
    assert semantic.shape == inst.shape == shape
    assert semantic.dtype == inst.dtype == np.int64
    assert 0 <= semantic.min() and semantic.max() <= 5


def test_targets_agree():
    for image, semantic, inst in SAMPLES:
        assert image.std() > 10  # textured, not blank
        np.testing.assert_array_equal(semantic > 0, inst > 0)
        ids = np.unique(inst[inst > 0])
        np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))  # numbered 1..n
        for i in ids:
            region = inst == i
            assert np.unique(semantic[region]).size == 1  # no instance straddles classes
            assert region.sum() >= 12  # every id present is a visible object
            assert ndimage.label(region)[1] == 1  # and one 4-connected blob
    binary, semantic, instance = (
        SyntheticShapes(3, target=t, seed=4) for t in ("binary", "semantic", "instance")
    )
    for i in range(3):
        b, s, n = binary.load(i), semantic.load(i), instance.load(i)
        np.testing.assert_array_equal(b.image, s.image)
        np.testing.assert_array_equal(b.mask, (s.mask > 0).astype(np.int64))
        np.testing.assert_array_equal(n.mask, s.mask)
        assert b.instances is None and s.instances is None and n.instances.max() >= 1
    assert binary.class_names == ["background", "shape"]
    assert instance.class_names == ["background", "disc", "rectangle", "triangle"]


def test_every_shape_class_occurs():
    counts = np.bincount(np.concatenate([s.ravel() for _, s, _ in SAMPLES]), minlength=4)
    assert (counts[1:] > 0).all() and counts.size == 4
    five = np.concatenate([render_shapes(i, 128, num_classes=5)[1].ravel() for i in range(10)])
    assert set(np.unique(five)) == set(range(len(SHAPES) + 1))


def test_touching_and_occluded_objects_occur():
    touching = [adjacent_pairs(inst) for _, _, inst in SAMPLES]
    assert sum(map(len, touching)) >= 20 and sum(bool(p) for p in touching) >= 10
    # Same-class neighbours exist (the instance task's hard case).
    assert any(
        len(np.unique(sem[np.isin(inst, p)])) == 1
        for _, sem, inst in SAMPLES
        for p in map(list, adjacent_pairs(inst))
    )
    # Occlusion: convex shapes (discs, rectangles) away from the frame with a bite taken out.
    assert bitten(SAMPLES) >= 3


def test_overlap_fraction_controls_occlusion():
    def samples(**kwargs):
        return [render_shapes(s, 128, touching_fraction=0.0, **kwargs) for s in range(20)]

    assert bitten(samples(overlap_fraction=0.0)) == 0 < 5 <= bitten(samples(overlap_fraction=1.0))


def test_touching_fraction_controls_contacts():
    def contacts(**kwargs):
        return sum(len(adjacent_pairs(render_shapes(s, 128, **kwargs)[2])) for s in range(10))

    assert contacts(touching_fraction=1.0, overlap_fraction=0.0) > 2 * contacts(
        touching_fraction=0.0, overlap_fraction=0.0
    )


def test_through_albumentations_pipeline_stays_aligned():
    dataset = SyntheticShapes(4, target="instance", seed=5)
    dataset.transform = A.Compose([A.RandomCrop(64, 64), A.HorizontalFlip(p=1), A.Normalize()])
    item, raw = dataset[2], dataset.load(2)
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["mask"].dtype == item["instances"].dtype == torch.int64
    assert item["mask"].shape == item["instances"].shape == (64, 64)
    assert item["name"] == "synthetic_5_00002"
    # Undo Normalize and the flip, find the crop in the raw image, then compare the targets there.
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    crop = ((item["image"].numpy().transpose(1, 2, 0) * std + mean) * 255)[:, ::-1]
    windows = sliding_window_view(raw.image[..., 0].astype(float), (64, 64))
    error = np.abs(windows - crop[..., 0]).max(axis=(2, 3))
    y, x = np.unravel_index(error.argmin(), error.shape)
    assert error[y, x] < 1.0
    np.testing.assert_allclose(crop, raw.image[y : y + 64, x : x + 64], atol=1.0)
    np.testing.assert_array_equal(item["mask"].numpy()[:, ::-1], raw.mask[y : y + 64, x : x + 64])
    np.testing.assert_array_equal(
        item["instances"].numpy()[:, ::-1], raw.instances[y : y + 64, x : x + 64]
    )


def test_cache_returns_equal_unshared_arrays():
    dataset = SyntheticShapes(2, target="instance")
    first = dataset.load(1)
    first.image[:] = 0
    first.instances[:] = 0
    again = dataset.load(1)
    uncached = SyntheticShapes(2, target="instance", cache=False).load(1)
    np.testing.assert_array_equal(again.image, uncached.image)
    np.testing.assert_array_equal(again.instances, uncached.instances)
    # Compact types while the sample is augmented; items give int64 (the loss's and metrics' type).
    assert again.mask.dtype == np.uint8 and again.instances.dtype == np.int32
    item = dataset[1]
    assert item["mask"].dtype == item["instances"].dtype == torch.int64
    with pytest.raises(IndexError):
        dataset.load(2)


@pytest.mark.parametrize(
    ("kwargs", "culprit"),
    [
        ({"target": "panoptic"}, "target"),
        ({"num_classes": 6}, "num_classes"),
        ({"num_classes": 0}, "num_classes"),
        ({"image_size": 8}, "image_size"),
        ({"num_images": 0}, "num_images"),
        ({"seed": -1}, "seed"),
        ({"max_objects": 0}, "max_objects"),
        ({"touching_fraction": 0.8, "overlap_fraction": 0.5}, "touching_fraction"),
    ],
)
def test_bad_args_name_the_argument(kwargs, culprit):
    with pytest.raises(ValueError, match=culprit):
        SyntheticShapes(**{"num_images": 4, **kwargs})


def test_bad_target_lists_choices_and_too_many_classes_lists_shapes():
    with pytest.raises(ValueError, match="binary.*semantic.*instance"):
        SyntheticShapes(4, target="x")
    with pytest.raises(ValueError, match="star"):
        render_shapes(0, 64, num_classes=9)
