"""The one dataset base class: subclasses load numpy arrays, the base augments and tensorises."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from albumentations.core.transforms_interface import Transform3D
from torch.utils.data import Dataset


@dataclass
class RawSample:
    """One sample as loaded from disk or generated, before augmentation.

    image: ``(H, W, C)`` uint8 or float32; mask: ``(H, W)`` class indices (ignore pixels set to the
    dataset's ``ignore_index``); instances: ``(H, W)`` label image (0 = background) or ``None``.
    """

    image: np.ndarray
    mask: np.ndarray
    name: str
    instances: np.ndarray | None = None


def coordinate_maps(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y pixel coordinates normalised to [-1, 1] (float32), for ``data.add_coords``."""
    ys, xs = np.meshgrid(np.linspace(-1, 1, height, dtype=np.float32),
                         np.linspace(-1, 1, width, dtype=np.float32), indexing="ij")
    return xs, ys


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

    def augment(self, name: str, size: tuple[int, ...], **targets) -> dict:
        """``self.transform(**targets)``, its errors naming the sample (albumentations' do not)."""
        try:
            return self.transform(**targets)
        except Exception as err:
            raise ValueError(
                f"augmenting sample {name!r} (size {tuple(size)}) failed: {err}; "
                "check the augment config (e.g. augment.crop_size)"
            ) from err

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        sample = self.load(self.seed_transform(key))
        image, masks = sample.image, [sample.mask]
        if sample.instances is not None:
            masks.append(sample.instances)
        if self.add_coords:
            # Coordinates of the *original* image travel as extra masks, so crops, flips and
            # rotations move them with the pixels and Normalize leaves them alone.
            masks.extend(coordinate_maps(*image.shape[:2]))
        if self.transform is not None:
            out = self.augment(sample.name, image.shape[:2], image=image, masks=masks)
            image, masks = out["image"], out["masks"]
        if image.ndim == 2:
            image = image[..., None]
        if self.add_coords:
            image = np.concatenate([image, np.stack(masks[-2:], axis=-1)], axis=-1)
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), np.float32)),
            "mask": torch.from_numpy(np.asarray(masks[0], dtype=np.int64)),
            "name": sample.name,
        }
        if sample.instances is not None:
            item["instances"] = torch.from_numpy(np.asarray(masks[1], dtype=np.int64))
        return item
