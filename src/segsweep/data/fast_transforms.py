"""albumentations transforms made faster where they move pixels in numpy: the same draws, the same values.

The shipped pipelines spend most of a 512 px crop's time in three places that are pure data
movement or exactly reproducible arithmetic (docs/benchmarks.md, "Data pipeline per loader worker"):

- ``SquareSymmetry`` turns and transposes arrays with ``np.rot90`` / ``swapaxes`` views that
  albumentations then copies contiguous (~1.5 ms for a 512 x 512 RGB crop); OpenCV's
  ``rotate`` / ``transpose`` / ``flip`` give the same arrays 10-20x faster;
- ``Normalize`` on uint8 maps pixels through per-channel tables into ``(H, W, C)``, which the
  dataset then transposes: :class:`PlanarNormalize` applies the same tables straight into
  ``(C, H, W)``;
- ``ElasticTransform`` adds its displacements to pixel coordinates in float64 and rounds to
  float32; adding in float32 gives the same numbers (a sum of two float32 is rounded once either
  way: float64 carries more than 2 x 24 + 2 bits) with a quarter of the memory traffic.

:func:`speed_up` gives a pipeline's transforms of exactly these classes their subclass here (the
same objects: parameters, probabilities and random state untouched), which datasets do to
their ``augment`` pipelines. tests/test_preprocess.py checks every shipped pipeline against
plain albumentations, sample by sample, to the bit.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.geometric import functional as fgeometric

# D4 group elements (albumentations' names) as OpenCV operations on an (H, W[, C]) array.
_ROTATIONS = {"r90": cv2.ROTATE_90_COUNTERCLOCKWISE, "r180": cv2.ROTATE_180, "r270": cv2.ROTATE_90_CLOCKWISE}
_OPENCV_DEPTHS = (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32, np.float64)


def _d4(image: np.ndarray, element: str) -> np.ndarray:
    """``fgeometric.d4`` through OpenCV, for 2D images of up to 4 channels in OpenCV's types."""
    if element == "e":
        return image
    if element in _ROTATIONS:
        out = cv2.rotate(image, _ROTATIONS[element])
    elif element == "t":
        out = cv2.transpose(image)
    elif element == "hvt":  # reflection over the anti-diagonal: transpose of the half turn
        out = cv2.transpose(cv2.rotate(image, cv2.ROTATE_180))
    else:  # "h" / "v": mirrors
        out = cv2.flip(image, 1 if element == "h" else 0)
    return out[..., None] if image.ndim == 3 and out.ndim == 2 else out


class SquareSymmetry(A.SquareSymmetry):
    """``albumentations.SquareSymmetry`` through OpenCV's rotations, transposes and flips."""

    @staticmethod
    def _opencv(data: np.ndarray) -> bool:
        return data.dtype in _OPENCV_DEPTHS and (data.ndim == 2 or (data.ndim == 3 and data.shape[2] <= 4))

    def apply(self, img: np.ndarray, group_element: str, **params: Any) -> np.ndarray:
        if not self._opencv(img):
            return super().apply(img, group_element=group_element, **params)
        return _d4(np.ascontiguousarray(img), group_element)

    def apply_to_volume(self, volume: np.ndarray, **params: Any) -> np.ndarray:
        """Slice by slice: the same turn of every slice, as albumentations' reshaped one."""
        if not self._opencv(volume[0]):
            return super().apply_to_volume(volume, **params)
        return np.stack([self.apply(image, **params) for image in volume])

    def apply_to_mask3d(self, mask3d: np.ndarray, **params: Any) -> np.ndarray:
        if not self._opencv(mask3d[0]):
            return super().apply_to_mask3d(mask3d, **params)
        return np.stack([self.apply(mask, **params) for mask in mask3d])


class ElasticTransform(A.ElasticTransform):
    """``albumentations.ElasticTransform`` with its sampling maps summed in float32 (same values)."""

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        dx, dy = fgeometric.generate_displacement_fields(
            (height, width), self.alpha, self.sigma, same_dxdy=self.same_dxdy,
            kernel_size=(17, 17) if self.approximate else (0, 0),
            random_generator=self.random_generator, noise_distribution=self.noise_distribution,
        )
        if dx.dtype == dy.dtype == np.float32:
            return {"map_x": np.arange(width, dtype=np.float32)[None, :] + dx,
                    "map_y": np.arange(height, dtype=np.float32)[:, None] + dy}
        maps = np.stack(np.meshgrid(np.arange(width), np.arange(height))) + np.stack([dx, dy])  # as albumentations
        return {"map_x": maps[0].astype(np.float32), "map_y": maps[1].astype(np.float32)}


class PlanarNormalize(A.Normalize):
    """``albumentations.Normalize`` with the same values, written channel-first.

    On uint8 images, ``Normalize`` (``normalization="standard"``) maps each pixel through one
    table per channel (albucore's ``normalize_lut``) and merges the channels into ``(H, W, C)``,
    which the dataset then transposes to ``(C, H, W)``: two passes over float32 data. This one
    applies the same tables, read off ``Normalize`` itself on a 0..255 ramp (so the values are
    bit-identical), with ``cv2.LUT`` into a ``(C, H, W)`` array, and returns that array's
    ``(H, W, C)`` view: transposing it back is free. Other dtypes and modes are ``Normalize``'s own.
    Meant as a pipeline's last transform (a transform after it would copy the view anyway).
    """

    defer = False  # set by segsweep.data.preprocess for compact batches: uint8 images pass unchanged

    def tables(self, channels: int) -> np.ndarray:
        """``(channels, 256)`` float32: what ``Normalize`` makes of each uint8 level, per channel."""
        tables = self.__dict__.setdefault("_planar_tables", {})
        if channels not in tables:
            ramp = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], channels, axis=2)
            values = np.asarray(super().apply(ramp), np.float32).reshape(256, channels)
            tables[channels] = np.ascontiguousarray(values.T)
        return tables[channels]

    def _fast(self, data, ndim: int) -> bool:
        return (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == ndim
                and self.normalization == "standard")

    def _channels_last_view(self, data: np.ndarray) -> np.ndarray:
        """``(..., C)`` uint8 -> float32 ``(..., C)`` view of a ``(C, ...)`` array."""
        channels, tables = data.shape[-1], self.tables(data.shape[-1])
        out = np.empty((channels, *data.shape[:-1]), np.float32)
        flat = np.ascontiguousarray(data).reshape(-1, data.shape[-2], channels)  # OpenCV takes 2D planes
        planes = cv2.split(flat) if channels <= 4 else [np.ascontiguousarray(flat[..., c]) for c in range(channels)]
        for c, plane in enumerate(planes):
            cv2.LUT(plane, tables[c], dst=out[c].reshape(plane.shape))
        return np.moveaxis(out, 0, -1)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return self._channels_last_view(img) if self._fast(img, 3) else super().apply(img, **params)

    def apply_to_volume(self, volume: np.ndarray, **params: Any) -> np.ndarray:
        return self._channels_last_view(volume) if self._fast(volume, 4) else super().apply_to_volume(volume, **params)

    def apply_with_params(self, params: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """``BasicTransform``'s, except that a uint8 image or volume keeps its channel-first memory:
        albumentations makes every output C-contiguous, here the very copy this class saves."""
        kept = {key: kwargs.pop(key) for key, ndim in (("image", 3), ("volume", 4))
                if self._fast(kwargs.get(key), ndim)}
        return {**super().apply_with_params(params, *args, **kwargs),
                **{key: data if self.defer else self._channels_last_view(data) for key, data in kept.items()}}


FASTER = {A.SquareSymmetry: SquareSymmetry, A.ElasticTransform: ElasticTransform}


def speed_up(transform) -> None:
    """Give a pipeline's ``SquareSymmetry`` and ``ElasticTransform`` (anywhere in it) and its
    trailing ``Normalize`` their faster subclass here: the same objects, so their parameters,
    probabilities and random state are untouched. Other transforms, and subclasses of these,
    are left as they are."""
    children = list(getattr(transform, "transforms", None) or [])
    _swap(children)
    if children and type(children[-1]) is A.Normalize:
        _become(children[-1], PlanarNormalize)


def _swap(transforms: list) -> None:
    for transform in transforms:
        if type(transform) in FASTER:
            _become(transform, FASTER[type(transform)])
        _swap(list(getattr(transform, "transforms", None) or []))


def _become(transform, cls: type) -> None:
    """``transform`` as an instance of its subclass ``cls``; the target -> method table that
    albumentations filled with bound methods at construction is bound anew."""
    transform.__class__ = cls
    transform._key2func = {key: getattr(transform, method.__name__) for key, method in transform._key2func.items()}
