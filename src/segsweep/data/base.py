"""The one dataset base class: subclasses load numpy arrays, the base augments and tensorises."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from albumentations.core.transforms_interface import Transform3D
from torch.utils.data import Dataset

from segsweep.data.preprocess import Preprocess, as_target, coordinate_maps

__all__ = ["RawSample", "SegmentationDataset", "coordinate_maps", "seed_augmentations"]


@dataclass
class RawSample:
    """One sample as loaded from disk or generated, before augmentation.

    image: ``(H, W, C)`` uint8 or float32; mask: ``(H, W)`` class indices (ignore pixels set to the
    dataset's ``ignore_index``); instances: ``(H, W)`` label image (0 = background) or ``None``.
    Masks may be any integer type that holds their values (uint8 keeps crops and flips cheap);
    items give them as int64.
    """

    image: np.ndarray
    mask: np.ndarray
    name: str
    instances: np.ndarray | None = None


def seed_augmentations(transform, seed: int | None) -> None:
    """Seed an albumentations pipeline with one random stream that all its transforms draw from.

    albumentations 2.0's ``Compose(seed=s)`` and ``set_random_seed(s)`` give every child transform
    its own generator seeded with the same ``s``, so children with the same probability fire
    together (both flips or neither, never one) and the crop position follows them. Handing every
    child the same generator objects (``set_random_state``) makes them draw in turn: independent.
    """
    if transform is not None and hasattr(transform, "set_random_state"):
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


class SegmentationDataset(Dataset):
    """Base for every dataset: applies an albumentations pipeline to image + masks together.

    Subclasses set ``class_names`` and ``ignore_index`` and implement ``__len__`` and ``load``.
    Masks go through albumentations' ``masks=`` argument so geometric transforms move them with the
    image (nearest interpolation, instance ids preserved).
    """

    class_names: list[str]
    ignore_index: int = 255
    in_channels: int = 3  # channels of one loaded image (before context slices and coordinates)
    # Input options set by the datamodule (``data.add_coords``, ``data.context_slices``).
    add_coords: bool = False
    context_slices: int = 0
    # Set by the datamodule for GPU runs: items hold uint8 images + their ``image_table`` and
    # compact masks, finished on the device (``segsweep.data.preprocess.finish_batch``).
    compact_batches: bool = False

    volumetric = False  # items are volumes (C, D, H, W) (segsweep.data.volumes.VolumeDataset)

    def __init__(self, transform=None):
        self.transform = transform
        seed_augmentations(transform, getattr(transform, "seed", None))  # undo Compose(seed=)'s shared seeds
        three_d = [type(t).__name__ for t in getattr(transform, "transforms", []) if isinstance(t, Transform3D)]
        if three_d and not self.volumetric:
            raise ValueError(
                f"the augment pipeline has 3D transforms ({', '.join(three_d)}) but {type(self).__name__} gives 2D "
                "images: use a 2D pipeline (augment=default, em, street) or volume data (data=volume_folder, "
                "synthetic3d, isbi2012_volume)")

    @staticmethod
    def scale_intensities(image: np.ndarray) -> np.ndarray:
        """A whole raw image as read -> the range the ``augment`` pipelines take (0..255); the
        identity here. A dataset that rescales (``TiledInstances``) overrides it, and predict
        applies the checkpoint's dataset class's own to every file it reads."""
        return image

    @property
    def preprocess(self) -> Preprocess:
        """Raw image -> network input, as this dataset makes it (``segsweep.data.preprocess``)."""
        return Preprocess(self.transform, add_coords=self.add_coords, context_slices=self.context_slices,
                          scale=self.scale_intensities, volumetric=self.volumetric)

    @property
    def input_channels(self) -> int:
        """Channels the model sees: each of the 2k+1 slices' channels, plus x/y coordinates."""
        return self.in_channels * (2 * self.context_slices + 1) + 2 * self.add_coords

    def load(self, index: int) -> RawSample:
        raise NotImplementedError

    def seed_transform(self, key: int | tuple[int, int]) -> int:
        """The index of a key; an (index, seed) key (segsweep.data.sampling.EpochSampler) fixes
        this sample's augmentation, whichever worker or rank loads it."""
        index, augment_seed = key if isinstance(key, tuple) else (key, None)
        if augment_seed is not None:
            seed_augmentations(self.transform, augment_seed)
        return index

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        sample = self.load(self.seed_transform(key))
        masks = [sample.mask] if sample.instances is None else [sample.mask, sample.instances]
        image, masks, table = self.preprocess.encoded(sample.image, masks, sample.name, self.compact_batches)
        return self.item(sample.name, image, table, *masks)

    def item(self, name: str, image: np.ndarray, table: np.ndarray | None, mask: np.ndarray,
             instances: np.ndarray | None = None) -> dict:
        """What the loader batches: the input, its table if compact, the int64 (or compact) masks."""
        item = {"image": torch.from_numpy(image), "mask": as_target(mask, table is not None, self.ignore_index),
                "name": name}
        if table is not None:
            item["image_table"] = torch.from_numpy(table)
        if instances is not None:
            item["instances"] = as_target(instances, table is not None, 0)
        return item
