"""3D volumes: a folder of volume files, or a folder stack of 2D slices read as one volume.

Items follow the 2D contract with a depth axis: ``image`` ``(C, D, H, W)`` float32, ``mask``
``(D, H, W)`` int64. Augmentation is albumentations' own 3D support (``volume=`` / ``mask3d=``
targets: ``RandomCrop3D``, ``PadIfNeeded3D``, ``CoarseDropout3D``, ``CubicSymmetry``, and the 2D
flips, 90-degree rotations, gamma and ``Normalize``, which albumentations applies to every slice
alike), so image and labels move together; nothing here is hand-written augmentation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tifffile

from segsweep.data.base import RawSample, SegmentationDataset
from segsweep.data.folder import FolderDataset

VOLUME_SUFFIXES = (".npy", ".tif", ".tiff")


class VolumeDataset(SegmentationDataset):
    """Base of the 3D datasets: subclasses give ``num_volumes`` and ``load_volume(index)``,
    a ``RawSample`` whose image is ``(D, H, W, C)`` and mask ``(D, H, W)``.

    Args:
        transform: an albumentations pipeline called with ``volume=`` and ``mask3d=``.
        samples_per_volume: items per volume (random crops of it in training): one volume is
            too few batches per epoch. Evaluation splits keep 1 (whole volumes).
        spacing: voxel size ``(z, y, x)`` (e.g. nm), recorded with the data; anisotropic stacks
            pool z less (``model.pool_z_levels``).
    """

    supports_context = False  # 2.5D context is for 2D slice datasets; a volume has its own z
    volumetric = True

    def __init__(self, transform=None, samples_per_volume: int = 1,
                 spacing: Sequence[float] = (1.0, 1.0, 1.0)):
        super().__init__(transform)
        if isinstance(samples_per_volume, bool) or not isinstance(samples_per_volume, int) or samples_per_volume < 1:
            raise ValueError(f"data samples_per_volume={samples_per_volume!r} must be a whole number >= 1")
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"data.dataset.spacing={list(spacing)} must be 3 positive sizes (z, y, x)")
        self.samples_per_volume = samples_per_volume
        self.spacing = tuple(float(s) for s in spacing)
        self._volumes: dict[int, RawSample] = {}  # loaded once: volumes are re-cropped every epoch

    @property
    def num_volumes(self) -> int:
        raise NotImplementedError

    def load_volume(self, index: int) -> RawSample:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_volumes * self.samples_per_volume

    def load(self, index: int) -> RawSample:
        volume = index // self.samples_per_volume
        if volume not in self._volumes:
            self._volumes[volume] = self.load_volume(volume)
        return self._volumes[volume]

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        sample = self.load(self.seed_transform(key))
        image, mask, table = self.preprocess.volume(sample.image, sample.mask, sample.name, self.compact_batches)
        return self.item(sample.name, image, table, mask)


def volume_files(folder: Path) -> dict[str, Path]:
    """The folder's volume files by stem."""
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist (check data.root and data.dataset's dirs)")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in VOLUME_SUFFIXES}


def read_volume(path: Path) -> np.ndarray:
    """A ``.npy`` or multi-page TIFF volume, with an error naming the file if unreadable."""
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        return np.asarray(tifffile.imread(path))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read volume file {path}: {err}") from err


class VolumeFolderDataset(VolumeDataset):
    """Volumes (``.npy`` or multi-page ``.tif``) in one folder, label volumes of the same shape in
    another, paired by file stem; splits as ``FolderDataset`` (``val_fraction``, ``split_seed``).

    Images are ``(D, H, W)`` or ``(D, H, W, C)`` with ``C = in_channels``; labels ``(D, H, W)``
    values mapped by ``value_map`` / ``void_values`` (unknown values are an error naming the file).
    """

    # The label checks of 2D folders, reused as they are (same attributes, same messages).
    _value_lookup = FolderDataset._value_lookup
    map_values = FolderDataset.map_values

    def __init__(self, root: str | Path, images: str, masks: str, class_names: Sequence[str],
                 in_channels: int = 1, value_map: Mapping[int, int] | None = None,
                 void_values: Sequence[int] = (), ignore_index: int = 255, split: str = "all",
                 val_fraction: float = 0.0, split_seed: int = 0, samples_per_volume: int = 1,
                 spacing: Sequence[float] = (1.0, 1.0, 1.0), transform=None):
        super().__init__(transform, samples_per_volume=samples_per_volume, spacing=spacing)
        self.class_names, self.in_channels, self.ignore_index = list(class_names), in_channels, ignore_index
        self._lookup = self._value_lookup(value_map, void_values)
        images_dir, masks_dir = Path(root) / images, Path(root) / masks
        image_files, mask_files = volume_files(images_dir), volume_files(masks_dir)
        stems = FolderDataset._split_stems(sorted(image_files), split, val_fraction, split_seed, None)
        missing = [image_files[s].name for s in stems if s not in mask_files]
        if missing:
            raise FileNotFoundError(f"no label volume in {masks_dir} for {missing[:5]} (matched by file stem)")
        if not stems:
            raise ValueError(f"empty dataset: no volumes ({'/'.join(VOLUME_SUFFIXES)}) in {images_dir} "
                             f"for split={split!r}")
        self.pairs = [(image_files[s], mask_files[s]) for s in stems]

    @property
    def num_volumes(self) -> int:
        return len(self.pairs)

    def load_volume(self, index: int) -> RawSample:
        image_path, mask_path = self.pairs[index]
        image, raw_mask = read_volume(image_path), read_volume(mask_path)
        if image.ndim == 3:
            image = image[..., None]
        if image.ndim != 4 or image.shape[-1] != self.in_channels:
            raise ValueError(f"volume {image_path} has shape {image.shape}; expected (D, H, W) or "
                             f"(D, H, W, {self.in_channels}) (data.dataset.in_channels={self.in_channels})")
        if raw_mask.shape != image.shape[:3]:
            raise ValueError(f"label volume {mask_path} has shape {raw_mask.shape} but volume {image_path} "
                             f"is {image.shape[:3]}; labels must be one value per voxel")
        return RawSample(image=image, mask=self.map_values(raw_mask, mask_path), name=image_path.stem)


class StackVolumeDataset(VolumeDataset):
    """A folder stack of 2D slices (the ISBI 2012 layout: ``images/`` and ``masks/``, one file per
    slice, in stem order) read as one volume, split along z into the same slices as the 2D
    ``FolderDataset`` with the same ``val_fraction`` / ``split_seed`` holds out.

    Every split is the whole stack's image; the labels of slices outside the split are set to
    ``ignore_index``, so a 3D model trains on the training slices' labels only and is scored on
    the held-out slices only, exactly the pixels the 2D and 2.5D runs are scored on. (Like 2.5D
    context, which also reads held-out slices' images as neighbours, 3D sees held-out images,
    never their labels.) Slices are read, checked and mapped by ``FolderDataset`` (its messages
    name the file).
    """

    def __init__(self, root: str | Path, images: str, masks: str, class_names: Sequence[str],
                 in_channels: int = 1, value_map: Mapping[int, int] | None = None,
                 void_values: Sequence[int] = (), ignore_index: int = 255, split: str = "all",
                 val_fraction: float = 0.0, split_seed: int = 0, samples_per_volume: int = 1,
                 spacing: Sequence[float] = (1.0, 1.0, 1.0), transform=None):
        super().__init__(transform, samples_per_volume=samples_per_volume, spacing=spacing)
        self.slices = FolderDataset(root, images, masks, class_names, in_channels, value_map,
                                    void_values, ignore_index, split="all")
        self.class_names, self.in_channels, self.ignore_index = list(class_names), in_channels, ignore_index
        stems = [image.stem for image, _ in self.slices.pairs]
        self.split = split
        self.split_slices = [stems.index(s) for s in
                             FolderDataset._split_stems(stems, split, val_fraction, split_seed, None)]
        self.name = f"{Path(root).name}-{split}"

    @property
    def num_volumes(self) -> int:
        return 1

    def load_volume(self, index: int) -> RawSample:
        samples = [self.slices.load(i) for i in range(len(self.slices))]
        shapes = {s.image.shape for s in samples}
        if len(shapes) > 1:
            raise ValueError(f"slices of {self.slices.images_dir} differ in size {sorted(shapes)}: not one stack")
        dtype = np.promote_types(samples[0].mask.dtype, np.min_scalar_type(self.ignore_index))
        mask = np.full((len(samples), *samples[0].mask.shape), self.ignore_index, dtype=dtype)
        for z in self.split_slices:
            mask[z] = samples[z].mask
        return RawSample(image=np.stack([s.image for s in samples]), mask=mask, name=self.name)
