"""Augmentation randomness, tested by its distribution (not only by its determinism).

Each sample carries the x/y coordinates of the original image through the pipeline
(``data.add_coords``), so the crop position and the orientation it was given can be read back off
the output. Over thousands of samples keyed as training keys them (``EpochSampler``: one seed per
sample), every orientation of the square must appear about 1/8 of the time, each probability-p
transform must fire at about rate p, and none may depend on another or on the crop position.
Seeds are fixed, so each test is deterministic; the thresholds (p > 1e-3) fail the old pipeline
by hundreds of standard deviations. Expected values come from the configs' definitions.
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from scipy import stats

from segsweep.data.base import RawSample, SegmentationDataset
from segsweep.data.sampling import EpochSampler

SIZE = 96  # the source image; crops are smaller so their position varies


class Texture(SegmentationDataset):
    """One fixed random image (every index), its coordinates carried as extra channels."""

    class_names = ["background", "object"]
    add_coords = True

    def __init__(self, transform, channels: int = 3, length: int = 4000):
        super().__init__(transform)
        self.in_channels = channels
        self.length = length
        self.image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, channels), dtype=np.uint8)

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> RawSample:
        return RawSample(self.image, np.zeros((SIZE, SIZE), np.uint8), name=str(index))


def orientation(x: np.ndarray, y: np.ndarray) -> tuple[int, int, int, int]:
    """The signed permutation mapping output (row, col) directions to source (x, y) directions:
    one of the 8 symmetries of the square. Means over interior rows and columns, so elastic warps
    (and the borders they fill) do not change it."""

    def along(coord: np.ndarray) -> tuple[int, int]:  # (down the rows, along the columns)
        a, b = coord.shape[0] // 4, 3 * coord.shape[0] // 4
        rows = coord[b, a:b].mean() - coord[a, a:b].mean()
        cols = coord[a:b, b].mean() - coord[a:b, a].mean()
        return (int(np.sign(rows)), 0) if abs(rows) > abs(cols) else (0, int(np.sign(cols)))

    return (*along(x), *along(y))


def pixel(coord: np.ndarray) -> np.ndarray:
    return np.rint((coord + 1) / 2 * (SIZE - 1)).astype(int)


def draw(dataset: Texture, n: int) -> list[dict]:
    """``n`` samples keyed as in training: epoch 0 of seed 0, one augmentation seed per sample."""
    keys = list(EpochSampler(len(dataset), seed=0, current_epoch=lambda: 0))[:n]
    samples = []
    for key in keys:
        image = dataset[key]["image"].numpy()
        x, y = image[-2], image[-1]
        samples.append({"image": image[:-2], "orientation": orientation(x, y),
                        "crop": (pixel(y).min(), pixel(x).min()), "x": pixel(x), "y": pixel(y)})
    return samples


def assert_uniform(counts: dict, categories: int, what: str) -> None:
    observed = list(counts.values()) + [0] * (categories - len(counts))
    p = stats.chisquare(observed).pvalue
    assert len(counts) == categories and p > 1e-3, f"{what}: {dict(counts)} (chi-square p = {p:.2g})"


def assert_independent(a: list, b: list, what: str) -> None:
    labels_a, labels_b = sorted(set(a)), sorted(set(b))
    table = np.zeros((len(labels_a), len(labels_b)))
    for u, v in zip(a, b, strict=True):
        table[labels_a.index(u), labels_b.index(v)] += 1
    p = stats.chi2_contingency(table).pvalue
    assert p > 1e-3, f"{what} are not independent (chi-square p = {p:.2g}):\n{table}"


def counts_of(values: list) -> dict:
    out: dict = {}
    for value in values:
        out[value] = out.get(value, 0) + 1
    return out


@pytest.mark.parametrize("seeding", ["per sample", "at construction"])
def test_two_flips_of_a_seeded_pipeline_fire_independently(seeding):
    """The case albumentations 2.0 gets wrong: a seeded Compose gave both flips the same seed, so
    they fired together (identity or both, never one)."""
    flips = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)], seed=0)
    dataset = Texture(flips, length=2000)
    if seeding == "per sample":
        outcomes = [s["orientation"] for s in draw(dataset, 2000)]
    else:  # integer keys: the pipeline's own stream, seeded once by Compose(seed=0)
        outcomes = [orientation(*dataset[i]["image"].numpy()[-2:]) for i in range(2000)]
    assert_uniform(counts_of(outcomes), 4, "identity / h-flip / v-flip / both")


def test_default_pipeline_orientations_rates_and_crops(make_cfg):
    """``augment=default``: every orientation at 1/8, brightness/contrast at its p = 0.5, each
    independent of the other and of where the crop was taken."""
    cfg = make_cfg("augment.crop_size=48")
    dataset = Texture(instantiate(cfg.augment.train, _convert_="all"))
    samples = draw(dataset, 4000)
    orientations = [s["orientation"] for s in samples]
    assert_uniform(counts_of(orientations), 8, "orientations")

    mean, std = np.array(cfg.augment.mean)[:, None, None], np.array(cfg.augment.std)[:, None, None]

    def recoloured(sample) -> bool:  # differs from the source pixels the coordinates point at
        source = dataset.image[sample["y"], sample["x"]].transpose(2, 0, 1) / 255.0
        return not np.allclose(sample["image"], (source - mean) / std, atol=1e-4)

    fired = [recoloured(s) for s in samples]
    rate = stats.binomtest(sum(fired), len(fired), 0.5)
    assert rate.pvalue > 1e-3, f"RandomBrightnessContrast(p=0.5) fired in {sum(fired)} of {len(fired)}"
    assert_independent(orientations, fired, "orientation and brightness/contrast")
    # Crop offsets in 4 x 4 bins (offsets 0..48 in each axis) against the orientation.
    crops = [tuple(int(v) * 4 // 49 for v in s["crop"]) for s in samples]
    assert_uniform(counts_of(crops), 16, "crop positions")
    assert_independent(orientations, crops, "orientation and crop position")


@pytest.mark.parametrize("augment", ["em", "volume"])
def test_other_square_pipelines_give_every_orientation(make_cfg, augment):
    """``augment=em`` (elastic deformation too) and the in-plane part of ``augment=volume``."""
    cfg = make_cfg(f"augment={augment}", "augment.crop_size=48")
    pipeline = instantiate(cfg.augment.train, _convert_="all")
    if augment == "volume":  # its 2D-capable transforms: the in-plane symmetries and intensity
        pipeline = A.Compose([t for t in pipeline.transforms if not type(t).__name__.endswith("3D")], seed=0)
    samples = draw(Texture(pipeline, channels=1, length=2000), 2000)
    orientations = [s["orientation"] for s in samples]
    assert_uniform(counts_of(orientations), 8, f"augment={augment} orientations")
    crops = [tuple(int(v) * 4 // 49 for v in s["crop"]) for s in samples]
    if augment == "em":
        assert_independent(orientations, crops, "orientation and crop position")


def test_a_key_gives_the_same_sample_in_any_worker(make_cfg):
    """Determinism is kept: a key's sample is the same in the main process and in loader workers,
    whatever the worker's own seed, and on a second pass (a resumed epoch)."""
    cfg = make_cfg()
    dataset = Texture(instantiate(cfg.augment.train, _convert_="all"), length=16)
    keys = list(EpochSampler(len(dataset), seed=3, current_epoch=lambda: 2))
    here = [dataset[key]["image"] for key in keys]
    from segsweep.data.datamodule import seed_worker

    loader = torch.utils.data.DataLoader(dataset, sampler=keys, batch_size=None, num_workers=2,
                                         worker_init_fn=seed_worker)
    for mine, theirs in zip(here, loader, strict=True):
        assert torch.equal(mine, theirs["image"])
    assert all(torch.equal(a, dataset[key]["image"]) for a, key in zip(here, keys, strict=True))


def test_a_3d_pipeline_on_2d_images_is_refused_naming_both(make_cfg):
    from segsweep.train import build_datamodule

    cfg = make_cfg("augment=volume")  # the default data: 2D synthetic shapes
    with pytest.raises(ValueError, match=r"3D transforms \(PadIfNeeded3D, RandomCrop3D\) but SyntheticShapes gives 2D "
                                         r"images: use a 2D pipeline"):
        build_datamodule(cfg).setup("fit")
