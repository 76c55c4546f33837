"""The network's input, made in one place: a raw image becomes ``(C', H, W)`` float32 here, for
training, evaluation and ``segsweep-predict`` alike.

:class:`Preprocess` holds the steps after a file is read:

1. ``scale``: the dataset class's intensity scaling of a whole raw image
   (``SegmentationDataset.scale_intensities``; ``TiledInstances``: percentiles to 0..255);
2. the ``augment`` pipeline (training: crops, flips, colour; evaluation: ``Normalize``), with the
   masks and, under ``data.add_coords``, the original image's x/y coordinates moved alongside;
3. channel-first float32, the coordinates appended as the last two channels.

A dataset's ``preprocess`` is one (its load does step 1 on what it reads), and
``Preprocess.from_config`` builds the same from a checkpoint's data and ``augment.eval`` configs
without reading any data, which is what predict does.

Compact batches (GPU runs, ``SegmentationDataModule``): step 3's float32 is the pipeline's last
lookup (``Normalize`` on uint8) applied to a uint8 image; items then carry the uint8 image and that
table, and ``finish_batch`` applies it on the device, to the bit: a fifth of the bytes per 512 px
image (with uint8 masks) through shared memory, pinning and the host-to-device copy.

Speed (512 px crops at several hundred per second per loader worker, docs/benchmarks.md): the
pipeline's symmetries, elastic maps and trailing ``Normalize`` run as their faster equivalents
(``segsweep.data.fast_transforms``: the same values; the last writes straight into the
channel-first array), and masks stay in their compact integer types until the end. Nothing here
changes a value or a random draw.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from segsweep.data.fast_transforms import PlanarNormalize, speed_up


@functools.lru_cache(maxsize=16)
def _coordinate_maps(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.meshgrid(np.linspace(-1, 1, height, dtype=np.float32),
                         np.linspace(-1, 1, width, dtype=np.float32), indexing="ij")
    xs.flags.writeable = ys.flags.writeable = False  # shared by every sample of this size
    return xs, ys


def coordinate_maps(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y pixel coordinates normalised to [-1, 1] (float32, read-only), for ``data.add_coords``."""
    return _coordinate_maps(int(height), int(width))


def _unscaled(image: np.ndarray) -> np.ndarray:
    return image


@dataclass
class Preprocess:
    """Raw image -> the network's input ``(C', H, W)`` float32, with its masks moved alongside.

    Args:
        transform: the ``augment`` pipeline (``augment.train`` in training, ``augment.eval`` in
            evaluation and predict); ``None``: the image as float32.
        add_coords: append the x/y coordinates of the original image (``data.add_coords``); they
            travel through the pipeline as masks, so crops, flips and warps move them with the
            pixels and ``Normalize`` leaves them alone.
        context_slices: ``data.context_slices``: the raw image holds slice s and its k neighbours
            each side, stacked on the channel axis (read by ``segsweep.data.folder.read_slices``).
        scale: the dataset class's ``scale_intensities``, applied to a whole raw image first.
        volumetric: the dataset gives volumes ``(D, H, W, C)`` (:meth:`volume`).
    """

    transform: Any = None
    add_coords: bool = False
    context_slices: int = 0
    scale: Callable[[np.ndarray], np.ndarray] = _unscaled
    volumetric: bool = False

    def __post_init__(self):
        speed_up(self.transform)

    @classmethod
    def from_config(cls, data: Mapping, transform) -> Preprocess:
        """What the datasets of a run's ``data`` config do, without building or reading them.

        Args:
            data: the run's ``data`` config (``dataset._target_``, ``add_coords``, ``context_slices``).
            transform: an albumentations pipeline, or its config (e.g. the run's ``augment.eval``).
        """
        from hydra.utils import get_class, instantiate

        if isinstance(transform, Mapping):
            transform = instantiate(transform, _convert_="all")
        target = (data.get("dataset") or {}).get("_target_")
        dataset = get_class(target) if target else None
        return cls(transform, add_coords=bool(data.get("add_coords")),
                   context_slices=int(data.get("context_slices") or 0),
                   scale=getattr(dataset, "scale_intensities", _unscaled),
                   volumetric=bool(getattr(dataset, "volumetric", False)))

    def augment(self, name: str, size: tuple[int, ...], compact: bool = False,
                **targets) -> tuple[dict, PlanarNormalize | None]:
        """``transform(**targets)``, its errors naming the sample (albumentations' do not). With
        ``compact`` (and a trailing ``PlanarNormalize``, no coordinates) that last lookup is left
        undone on uint8 images; returned with the outputs, else ``None``."""
        last = (getattr(self.transform, "transforms", None) or [None])[-1]
        deferred = last if compact and not self.add_coords and isinstance(last, PlanarNormalize) else None
        try:
            if deferred is not None:
                deferred.defer = True
            return self.transform(**targets), deferred
        except Exception as err:
            raise ValueError(
                f"augmenting sample {name!r} (size {tuple(size)}) failed: {err}; "
                "check the augment config (e.g. augment.crop_size)"
            ) from err
        finally:
            if deferred is not None:
                deferred.defer = False

    def __call__(self, image: np.ndarray, masks: Sequence[np.ndarray] = (),
                 name: str = "image") -> tuple[np.ndarray, list[np.ndarray]]:
        """``image`` ``(H, W, C)`` as loaded (scaled), ``masks`` ``(H, W)`` -> ``(input (C', H, W)
        float32, the masks as the pipeline moved them, in their own dtypes)``."""
        inputs, masks, _ = self.encoded(image, masks, name)
        return inputs, masks

    def encoded(self, image: np.ndarray, masks: Sequence[np.ndarray] = (), name: str = "image",
                compact: bool = False) -> tuple[np.ndarray, list[np.ndarray], np.ndarray | None]:
        """As ``__call__``; with ``compact``, a uint8 image's last step, the pipeline's trailing
        ``Normalize`` (a per-channel table lookup), is left undone: ``(input (C, H, W) uint8,
        masks, table (C, 256) float32)`` with ``table[c][input[c]]`` the float32 input, to the
        bit (``decode``): a quarter of the image's bytes to carry to the training process and the GPU.
        Otherwise (also when the image is not uint8 there, or with coordinates) the table is ``None``."""
        masks, deferred = list(masks), None
        if self.add_coords:
            masks.extend(coordinate_maps(*image.shape[:2]))
        if self.transform is not None:
            out, deferred = self.augment(name, image.shape[:2], compact, image=image, masks=masks)
            image, masks = out["image"], list(out["masks"])
        if image.ndim == 2:
            image = image[..., None]
        planes = image.transpose(2, 0, 1)  # PlanarNormalize's output: already contiguous
        if deferred is not None and image.dtype == np.uint8:
            return np.ascontiguousarray(planes), masks, deferred.tables(planes.shape[0])
        if not self.add_coords:
            return np.ascontiguousarray(planes, np.float32), masks, None
        channels, (height, width) = planes.shape[0], planes.shape[1:]
        inputs = np.empty((channels + 2, height, width), np.float32)
        inputs[:channels] = planes
        inputs[channels:] = np.stack(masks[-2:])
        return inputs, masks[:-2], None

    def volume(self, volume: np.ndarray, mask: np.ndarray | None = None, name: str = "volume",
               compact: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``volume`` ``(D, H, W, C)``, ``mask`` ``(D, H, W)`` -> ``(input (C, D, H, W) float32,
        mask, None)``; with ``compact``, as ``encoded``: ``(uint8 input, mask, table)``."""
        if self.add_coords:
            raise ValueError("data.add_coords adds 2D coordinate channels; volumes have none")
        deferred = None
        if self.transform is not None:
            targets = {"volume": volume} if mask is None else {"volume": volume, "mask3d": mask}
            out, deferred = self.augment(name, volume.shape[:3], compact, **targets)
            volume, mask = out["volume"], out.get("mask3d")
        planes = volume.transpose(3, 0, 1, 2)
        if deferred is not None and volume.dtype == np.uint8:
            return np.ascontiguousarray(planes), mask, deferred.tables(planes.shape[0])
        return np.ascontiguousarray(planes, np.float32), mask, None


def decode(inputs: torch.Tensor, table: torch.Tensor, channel_axis: int = 1) -> torch.Tensor:
    """Compact inputs (uint8; channels on ``channel_axis``: 1 for a batch, 0 for an item) ->
    float32 through ``table`` ``(C, 256)``: the lookup ``Normalize`` leaves to the device
    (``Preprocess.encoded``), on whatever device the tensors are; the same values."""
    shape = [1] * inputs.ndim
    shape[channel_axis] = table.shape[0]
    offsets = torch.arange(table.shape[0], device=inputs.device).view(shape) * 256
    return table.reshape(-1)[inputs.long() + offsets]


def as_long(mask: np.ndarray) -> np.ndarray:
    """A mask as the int64 array the loss and the metrics take (contiguous, its own memory)."""
    return np.ascontiguousarray(mask, dtype=np.int64)


def as_target(mask: np.ndarray, compact: bool, fill: int) -> torch.Tensor:
    """A mask for the batch: int64, or with ``compact`` its uint8 / int32 self when batches may
    pad it with ``fill`` in that type (``finish_batch`` makes it int64 on the device)."""
    if compact and ((mask.dtype == np.uint8 and 0 <= fill <= 255) or mask.dtype == np.int32):
        return torch.from_numpy(np.ascontiguousarray(mask))
    return torch.from_numpy(as_long(mask))


def finish_batch(batch: dict) -> dict:
    """A collated batch as the task takes it: compact images decoded (``decode``), masks int64.
    The datamodule calls it on the device, after the transfer (``on_after_batch_transfer``)."""
    table = batch.pop("image_table", None)
    if table is not None:
        batch["image"] = decode(batch["image"], table)
    for key in ("mask", "instances"):
        if key in batch and batch[key].dtype != torch.int64:
            batch[key] = batch[key].long()
    return batch
