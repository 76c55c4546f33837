"""Instance datasets: label-image folders, masks split into connected components, COCO JSON, and
tiles of one image. Each yields ``instances`` (0 = background, one id per object) and a class
``mask``; the base dataset augments both together, so instances stay consistent with the image.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from faster_coco_eval.core import mask as mask_utils  # pycocotools' mask API
from scipy import ndimage as ndi

from segsweep.data.base import RawSample, SegmentationDataset
from segsweep.data.folder import FolderDataset, read_image

SOURCES = ("labels", "components")


def _connected(binary: np.ndarray, connectivity: int) -> np.ndarray:
    structure = ndi.generate_binary_structure(2, connectivity)
    return ndi.label(binary, structure=structure)[0].astype(np.int64)


class InstanceFolderDataset(FolderDataset):
    """Images and instance labels in two folders paired by file stem (``FolderDataset``'s splits).

    Args:
        source: ``labels``: the ``masks`` files are label images (0 = background, any ids, e.g.
            uint16 TIFF). ``components``: they are binary masks whose pixels equal to
            ``foreground_value`` are foreground; each connected component is one instance (ISBI
            2012 cell interiors, separated by membranes).
        foreground_value: ``components``: the mask value of the objects.
        connectivity: ``components``: 1 = 4-neighbours (thin separators stay separating), 2 = 8.
        min_size: instances smaller than this many pixels become background.
        Other args as ``FolderDataset``; ``class_names`` is ``[background, object]``.
    """

    def __init__(
        self,
        root,
        images: str,
        masks: str,
        source: str = "labels",
        foreground_value: int = 255,
        connectivity: int = 1,
        min_size: int = 0,
        class_names: Sequence[str] = ("background", "object"),
        **kwargs,
    ):
        if source not in SOURCES:
            raise ValueError(f"data source={source!r} is not one of {list(SOURCES)}")
        if len(class_names) != 2:
            raise ValueError(
                f"instance label images carry no classes: class_names needs 2 names, "
                f"got {class_names}"
            )
        super().__init__(root, images, masks, class_names, **kwargs)
        self.source, self.foreground_value = source, foreground_value
        self.connectivity, self.min_size = connectivity, min_size

    def load(self, index: int) -> RawSample:
        image_path, mask_path = self.pairs[index]
        image, raw = read_image(image_path), read_image(mask_path)
        if image.ndim == 2:
            image = image[..., None]
        if image.shape[2] != self.in_channels:
            raise ValueError(
                f"{image_path} has {image.shape[2]} channels but "
                f"data.in_channels={self.in_channels}"
            )
        if raw.ndim != 2 or raw.shape != image.shape[:2]:
            raise ValueError(
                f"label image {mask_path} has shape {raw.shape} but image {image_path} is "
                f"{image.shape[:2]}; it must be single-channel and of the same size"
            )
        if self.source == "components":
            if not np.any(raw == self.foreground_value):
                raise ValueError(
                    f"mask {mask_path} has no pixel of foreground_value={self.foreground_value} "
                    f"(values: {np.unique(raw)[:10].tolist()})"
                )
            instances = _connected(raw == self.foreground_value, self.connectivity)
        else:
            if not np.issubdtype(raw.dtype, np.integer) or raw.min() < 0:
                raise ValueError(
                    f"label image {mask_path} must hold non-negative integer ids, got {raw.dtype} "
                    f"with min {raw.min()}"
                )
            instances = raw.astype(np.int64)
        if self.min_size > 1 and instances.any():
            instances = np.where(
                np.bincount(instances.ravel())[instances] < self.min_size, 0, instances
            )
        return RawSample(
            image=image,
            mask=(instances > 0).view(np.uint8),
            name=image_path.stem,
            instances=instances,
        )


class CocoInstances(SegmentationDataset):
    """A COCO JSON file (polygons or RLE, via pycocotools) and its images folder.

    Args:
        root: folder the other paths are relative to.
        annotations: the COCO JSON file of this split.
        images: folder of the images named by ``file_name``.
        categories: category names to keep, in class order (class 1, 2, ...); ``None`` = all, in id
            order. Class 0 is ``background``.
        in_channels: channels every image must have.
        ignore_index: mask value of ``iscrowd`` regions (loss and metrics skip them).
    """

    def __init__(
        self,
        root,
        annotations: str,
        images: str = "images",
        categories: Sequence[str] | None = None,
        in_channels: int = 3,
        ignore_index: int = 255,
        transform=None,
    ):
        super().__init__(transform)
        self.path = Path(root) / annotations
        self.images_dir = Path(root) / images
        self.in_channels, self.ignore_index = in_channels, ignore_index
        if not self.path.is_file():
            raise FileNotFoundError(
                f"COCO annotation file {self.path} does not exist (data.splits.*.annotations)"
            )
        try:
            coco = json.loads(self.path.read_text())
            cats = {c["id"]: c["name"] for c in coco["categories"]}
            images = coco["images"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(
                f"{self.path} is not COCO instance JSON (needs images, annotations, "
                f"categories): {type(err).__name__}: {err}"
            ) from err
        names = list(categories) if categories is not None else [cats[k] for k in sorted(cats)]
        unknown = sorted(set(names) - set(cats.values()))
        if unknown:
            raise ValueError(
                f"data categories {unknown} are not in {self.path} (it has {sorted(cats.values())})"
            )
        self.class_names = ["background", *names]
        self.class_of = {cid: names.index(name) + 1 for cid, name in cats.items() if name in names}
        self.images = sorted(images, key=lambda im: im["id"])
        self.annotations: dict[int, list[dict]] = {im["id"]: [] for im in self.images}
        for ann in coco.get("annotations", []):
            if ann.get("image_id") not in self.annotations:
                raise ValueError(
                    f"{self.path}: annotation id {ann.get('id')} has unknown image_id "
                    f"{ann.get('image_id')}"
                )
            if ann.get("category_id") not in cats:
                raise ValueError(
                    f"{self.path}: annotation id {ann.get('id')} has unknown category_id "
                    f"{ann.get('category_id')} (categories: {sorted(cats)})"
                )
            self.annotations[ann["image_id"]].append(ann)

    def __len__(self) -> int:
        return len(self.images)

    def _decode(self, ann: dict, height: int, width: int, file_name: str) -> np.ndarray:
        seg = ann.get("segmentation")
        where = f"{self.path}: annotation id {ann.get('id')} (image {file_name})"
        if isinstance(seg, list):  # polygons [[x1, y1, x2, y2, ...], ...]
            for poly in seg:
                xy = np.asarray(poly, float).reshape(-1, 2)
                bad = (xy < 0) | (xy > [width, height])
                if bad.any():
                    x, y = xy[bad.any(1)][0]
                    raise ValueError(
                        f"{where}: polygon point ({x}, {y}) is outside the {width}x{height} image"
                    )
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg, dict) and "counts" in seg:
            if list(seg.get("size", [])) != [height, width]:
                raise ValueError(
                    f"{where}: RLE size {seg.get('size')} differs from the image's "
                    f"{[height, width]}"
                )
            rle = (
                mask_utils.frPyObjects(seg, height, width)
                if isinstance(seg["counts"], list)
                else seg
            )
        else:
            raise ValueError(
                f"{where}: segmentation must be polygons or RLE, got {type(seg).__name__}"
            )
        return mask_utils.decode(rle).astype(bool)

    def load(self, index: int) -> RawSample:
        info = self.images[index]
        path = self.images_dir / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.path}: image id {info['id']} file {path} does not exist"
            )
        image = read_image(path)
        image = image[..., None] if image.ndim == 2 else image
        if image.shape[2] != self.in_channels:
            raise ValueError(
                f"{path} has {image.shape[2]} channels but data.in_channels={self.in_channels}"
            )
        height, width = image.shape[:2]
        instances = np.zeros((height, width), np.int64)
        mask = np.zeros((height, width), np.int64)
        # Largest first, so a small object lying on a larger one stays visible.
        anns = sorted(self.annotations[info["id"]], key=lambda a: -float(a.get("area", 0)))
        for number, ann in enumerate(anns, start=1):
            pixels = self._decode(ann, height, width, info["file_name"])
            if ann.get("iscrowd"):
                mask[pixels] = self.ignore_index
            elif ann["category_id"] in self.class_of:
                instances[pixels], mask[pixels] = number, self.class_of[ann["category_id"]]
        return RawSample(
            image=image, mask=mask, name=Path(info["file_name"]).stem, instances=instances
        )


class TiledInstances(SegmentationDataset):
    """Tiles of one image + label image, e.g. a 2x2 grid: train on three tiles, validate on one.

    Args:
        root: folder of the two files.
        image / labels: the image and its instance label image (0 = background, any ids).
        grid: ``(rows, cols)`` of tiles.
        tiles: indices (row-major) of the tiles of this split.
        repeat: each tile appears this many times per epoch (random crops differ each time).
        in_channels: channels of the image. Intensities are scaled to 0..255 (0.5 / 99.8
            percentiles) so any bit depth meets the ``augment`` pipeline's normalisation.
    """

    class_names = ["background", "nucleus"]

    def __init__(
        self,
        root,
        image: str,
        labels: str,
        tiles: Sequence[int],
        grid: Sequence[int] = (2, 2),
        repeat: int = 1,
        in_channels: int = 1,
        transform=None,
    ):
        super().__init__(transform)
        self.in_channels = in_channels
        img, lab = read_image(Path(root) / image), read_image(Path(root) / labels)
        img = img[..., None] if img.ndim == 2 else img
        if img.shape[:2] != lab.shape:
            raise ValueError(
                f"{Path(root) / labels} is {lab.shape}, {Path(root) / image} {img.shape[:2]}"
            )
        img = self.scale_intensities(img)
        rows, cols = grid
        h, w = lab.shape[0] // rows, lab.shape[1] // cols
        bad = [t for t in tiles if not 0 <= t < rows * cols]
        if bad:
            raise ValueError(f"tiles {bad} outside the {rows}x{cols} grid (0..{rows * cols - 1})")
        self.tiles = [
            (
                img[r * h : (r + 1) * h, c * w : (c + 1) * w],
                lab[r * h : (r + 1) * h, c * w : (c + 1) * w],
                t,
            )
            for t in tiles
            for r, c in [divmod(t, cols)]
        ]
        self.repeat = repeat

    @staticmethod
    def scale_intensities(image: np.ndarray) -> np.ndarray:
        """Any bit depth -> floats in 0..255: the 0.5 and 99.8 percentiles of the whole image (not
        of a tile) to 0 and 255, clipped. Predict applies it to each file it reads."""
        low, high = np.percentile(image, (0.5, 99.8))
        return np.clip((image.astype(np.float32) - low) / max(high - low, 1e-6), 0, 1) * 255

    def __len__(self) -> int:
        return len(self.tiles) * self.repeat

    def load(self, index: int) -> RawSample:
        image, labels, tile = self.tiles[index % len(self.tiles)]
        instances = labels.astype(np.int64)
        return RawSample(
            image=image.copy(),
            mask=(instances > 0).view(np.uint8),
            name=f"tile{tile}",
            instances=instances,
        )
