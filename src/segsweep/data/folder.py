"""Images dir + masks dir matched by file stem: the dataset behind isbi2012, camvid and user data."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from segsweep.data.base import RawSample, SegmentationDataset
from segsweep.data.datamodule import SegmentationDataModule

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SPLITS = ("train", "val", "all")


def read_image(path: Path) -> np.ndarray:
    """Read an image or mask file as a numpy array, with an error naming the file if unreadable."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return np.asarray(tifffile.imread(path))
        if path.suffix.lower() == ".png":
            image = _read_png(path)
            if image is not None:
                return image
        with Image.open(path) as img:
            return np.asarray(img)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ValueError(f"cannot read image file {path}: {err}") from err


# PNG colour type -> channels OpenCV gives (grey 2D; RGB / RGBA as BGR / BGRA) and bit depths.
_PNG_LAYOUTS = {(0, 8): None, (0, 16): None, (2, 8): 3, (6, 8): 4}


def _read_png(path: Path) -> np.ndarray | None:
    """The PNGs that OpenCV decodes to exactly PIL's array, 2-3x faster (its libpng against PIL's
    own decoder; a 512 x 512 EM slice took 10 ms with PIL): 8/16-bit grey, 8-bit RGB and RGBA,
    as the header (IHDR) says and the result's shape confirms. ``None`` for any other (palette,
    grey + alpha, 1-bit, 16-bit colour, transparency chunks): PIL reads those."""
    with open(path, "rb") as file:
        header = file.read(26)
    if len(header) < 26 or header[:8] != b"\x89PNG\r\n\x1a\n" or header[12:16] != b"IHDR":
        return None
    depth, colour = header[24], header[25]
    if (colour, depth) not in _PNG_LAYOUTS:
        return None
    channels = _PNG_LAYOUTS[colour, depth]
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.dtype != (np.uint8 if depth == 8 else np.uint16) \
            or (image.ndim == 2) != (channels is None) or (channels and image.shape[2] != channels):
        return None
    if channels is not None:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB if channels == 3 else cv2.COLOR_BGRA2RGBA)
    return image


def _files_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist (check data.root and the split's dirs)")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def slice_stack(folder: Path) -> list[Path]:
    """A folder's images in stem order: the stack of slices 2.5D input reads neighbours from."""
    files = _files_by_stem(folder)
    return [files[stem] for stem in sorted(files)]


def read_slices(stack: Sequence[Path], centre: int, k: int) -> np.ndarray:
    """Slice ``centre`` of ``stack`` and its ``k`` neighbours each side, stacked on the channel axis.

    Neighbours past either end of the stack are mirrored (s-1 -> s+1 at the first slice).
    """
    last = len(stack) - 1
    if k > last:
        raise ValueError(f"data.context_slices={k} needs at least {k + 1} slices, "
                         f"{Path(stack[0]).parent} has {last + 1}")
    slices = []
    for offset in range(-k, k + 1):
        i = abs(centre + offset)  # mirror at the start
        i = last - abs(last - i)  # and at the end
        image = read_image(stack[i])
        slices.append(image[..., None] if image.ndim == 2 else image)
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise ValueError(f"slices around {stack[centre]} differ in size {sorted(shapes)}: not one stack")
    return np.concatenate(slices, axis=-1)


def fold_stems(stems: list[str], split: str, fold: int, folds: int, seed: int,
               folder: Path) -> list[str]:
    """The ``train`` or ``val`` stems of fold ``fold`` of ``folds`` (sorted). As scikit-learn's
    ``KFold(folds, shuffle=True)`` cuts: the shuffled stems in ``folds`` consecutive parts whose
    sizes differ by at most one; written here because scikit-learn is no dependency of ours."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"data.folds={folds!r} must be a whole number >= 2")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise ValueError(f"data.fold={fold!r} must be one of 0..{folds - 1} (data.folds={folds})")
    if folds > len(stems):
        raise ValueError(f"data.folds={folds} is more than the {len(stems)} images in {folder}: "
                         "a fold would be empty")
    shuffled = random.Random(seed).sample(stems, len(stems))
    size, extra = divmod(len(stems), folds)  # the first `extra` folds hold one more stem
    start = fold * size + min(fold, extra)
    held_out = set(shuffled[start:start + size + (fold < extra)])
    return sorted(held_out if split == "val" else set(stems) - held_out)


class FolderDataModule(SegmentationDataModule):
    """A :class:`~segsweep.data.datamodule.SegmentationDataModule` over a folder dataset that
    takes ``data.fold`` / ``data.folds`` (k-fold cross-validation, see :class:`FolderDataset`):
    ``segsweep-train -m data=folder data.fold=0,1,2,3,4`` runs every fold; the leaderboard counts
    folds as replicas of one set-up. ``fold=None`` keeps the dataset's own split."""

    def __init__(self, dataset: Callable[..., SegmentationDataset], fold: int | None = None,
                 folds: int = 5, **kwargs):
        if fold is not None:
            dataset = functools.partial(dataset, fold=fold, folds=folds)
        super().__init__(dataset, **kwargs)


class FolderDataset(SegmentationDataset):
    """Images and masks in two folders, paired by file stem.

    Args:
        root: folder the other paths are relative to.
        images: images folder (relative to ``root``).
        masks: masks folder (relative to ``root``), one mask per image with the same stem.
        class_names: names of the classes, index = class id.
        in_channels: channels every image must have (1 = grey, 3 = RGB).
        value_map: mask value -> class id, e.g. ``{0: 1, 255: 0}`` for ISBI where the dark value
            is the object. ``None`` keeps values as class ids.
        void_values: mask values that mean "not labelled"; they become ``ignore_index``.
        ignore_index: value written to ignored pixels (loss and metrics skip them).
        split: ``train``, ``val`` or ``all``: with ``val_fraction``, a seeded random split.
        val_fraction: share of stems held out for ``val`` when one folder holds both splits.
        split_seed: seed of that split (the same seed gives the same split on every machine).
        stems_file: text file listing the stems of this split, one per line (overrides the
            random split).
        fold / folds: k-fold cross-validation instead of ``val_fraction``: the stems, shuffled
            with ``split_seed``, cut into ``folds`` parts; part ``fold`` is ``val``, the others
            ``train``; ``all`` (a test folder) is unaffected.
    """

    def __init__(
        self,
        root: str | Path,
        images: str,
        masks: str,
        class_names: Sequence[str],
        in_channels: int = 3,
        value_map: Mapping[int, int] | None = None,
        void_values: Sequence[int] = (),
        ignore_index: int = 255,
        split: str = "all",
        val_fraction: float = 0.0,
        split_seed: int = 0,
        stems_file: str | None = None,
        fold: int | None = None,
        folds: int = 5,
        transform=None,
    ):
        super().__init__(transform)
        if split not in SPLITS:
            raise ValueError(f"data split={split!r} is not one of {list(SPLITS)}")
        self.class_names = list(class_names)
        self.in_channels = in_channels
        self.ignore_index = ignore_index
        self.images_dir, self.masks_dir = Path(root) / images, Path(root) / masks
        self._lookup = self._value_lookup(value_map, void_values)

        image_files, mask_files = _files_by_stem(self.images_dir), _files_by_stem(self.masks_dir)
        if fold is not None and split != "all":
            if stems_file is not None:
                raise ValueError(f"data.fold={fold} and stems_file={stems_file} both choose the "
                                 "split: set one of them")
            stems = fold_stems(sorted(image_files), split, fold, folds, split_seed, self.images_dir)
        else:
            stems = self._split_stems(sorted(image_files), split, val_fraction, split_seed, stems_file)
        missing = [image_files[s].name for s in stems if s not in mask_files]
        if missing:
            raise FileNotFoundError(
                f"no mask in {self.masks_dir} for {len(missing)} image(s) of {self.images_dir}, "
                f"e.g. {missing[:5]} (masks are matched by file stem)"
            )
        if not stems:
            raise ValueError(
                f"empty dataset: no images ({'/'.join(IMAGE_SUFFIXES)}) in {self.images_dir} "
                f"for split={split!r}"
            )
        self.pairs = [(image_files[s], mask_files[s]) for s in stems]
        # For 2.5D input: the whole folder in stem order is the stack, whatever the split.
        self.stack = slice_stack(self.images_dir)
        self.stack_index = {path: i for i, path in enumerate(self.stack)}

    supports_context = True

    def read_context(self, image_path: Path) -> np.ndarray:
        """Slice s and its ``context_slices`` neighbours each side, stacked on the channel axis
        (``read_slices``: mirrored at the stack's ends)."""
        return read_slices(self.stack, self.stack_index[image_path], self.context_slices)

    def _value_lookup(self, value_map, void_values) -> dict[int, int]:
        """Mask value -> class id (or ignore_index); values outside it are an error at load time."""
        n = len(self.class_names)
        lookup = {int(k): int(v) for k, v in (value_map or {i: i for i in range(n)}).items()}
        bad = {k: v for k, v in lookup.items() if not 0 <= v < n}
        if bad:
            raise ValueError(f"data.value_map maps to class ids {bad} outside 0..{n - 1} ({self.class_names})")
        lookup.update({int(v): self.ignore_index for v in void_values})
        return lookup

    @staticmethod
    def _split_stems(stems, split, val_fraction, split_seed, stems_file) -> list[str]:
        if stems_file is not None:
            listed = [s.strip() for s in Path(stems_file).read_text().splitlines() if s.strip()]
            unknown = sorted(set(listed) - set(stems))
            if unknown:
                raise FileNotFoundError(f"{stems_file} lists stems with no image: {unknown[:5]}")
            return listed
        if split == "all" or val_fraction == 0:
            return stems
        if not 0 < val_fraction < 1:
            raise ValueError(f"data val_fraction={val_fraction} must be in (0, 1)")
        shuffled = random.Random(split_seed).sample(stems, len(stems))
        n_val = max(1, round(val_fraction * len(stems)))
        return sorted(shuffled[:n_val] if split == "val" else shuffled[n_val:])

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> RawSample:
        image_path, mask_path = self.pairs[index]
        image = self.read_context(image_path) if self.context_slices else read_image(image_path)
        raw_mask = read_image(mask_path)
        if image.ndim == 2:
            image = image[..., None]
        per_slice = image.shape[2] // (2 * self.context_slices + 1)
        if per_slice != self.in_channels:
            raise ValueError(
                f"{image_path} has {per_slice} channels but data.dataset.in_channels={self.in_channels}"
            )
        if raw_mask.ndim != 2 or raw_mask.shape != image.shape[:2]:
            raise ValueError(
                f"mask {mask_path} has shape {raw_mask.shape} but image {image_path} is "
                f"{image.shape[:2]}; a mask must be a single-channel image of the same size"
            )
        return RawSample(image=image, mask=self.map_values(raw_mask, mask_path), name=image_path.stem)

    def map_values(self, raw_mask: np.ndarray, mask_path: Path) -> np.ndarray:
        """Mask values -> class ids (uint8 when every id and ``ignore_index`` fit, else int64).

        8- and 16-bit masks go through a table indexed by the value; other types value by value."""
        lookup = self._lookup
        dtype = np.uint8 if all(0 <= v < 256 for v in lookup.values()) else np.int64
        flat = raw_mask.dtype == np.uint8 and raw_mask.ndim == 2  # OpenCV's 2D image functions apply
        if flat:  # OpenCV's histogram: the values present, in one fast pass
            values = np.flatnonzero(cv2.calcHist([raw_mask], [0], None, [256], [0, 256]))
        elif raw_mask.dtype in (np.uint8, np.uint16):
            values = np.flatnonzero(np.bincount(raw_mask.ravel()))
        else:
            values = np.unique(raw_mask)
        unknown = [int(v) for v in values if int(v) not in lookup]
        if unknown:
            raise ValueError(
                f"mask {mask_path} has values {unknown[:10]} not in data.value_map / void_values "
                f"(known values: {sorted(lookup)})"
            )
        if raw_mask.dtype in (np.uint8, np.uint16):
            table = np.zeros(256 if raw_mask.dtype == np.uint8 else int(values.max(initial=0)) + 1, dtype)
            for value in values:
                table[value] = lookup[int(value)]
            if flat and dtype == np.uint8:
                return cv2.LUT(raw_mask, table)
            return np.take(table, raw_mask)
        mask = np.empty(raw_mask.shape, dtype=dtype)
        for value in values:
            mask[raw_mask == value] = lookup[int(value)]
        return mask
