"""Built-in synthetic 3D data: touching ellipsoid blobs in noise, rendered from a seed.

The 3D counterpart of ``SyntheticShapes``: the default data of the 3D path (runs and tests need
no download). Each blob has a class (its mean brightness: class 1 darkest of the blobs, the last
class brightest, all above the background) and touches or overlaps a neighbour, so the boundary
between two blobs of one class is only visible in 3D context; smooth noise and pixel noise on top.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from segsweep.data.base import RawSample
from segsweep.data.volumes import VolumeDataset

TARGETS = ("binary", "semantic")


def render_blobs(
    rng: np.random.Generator, shape: tuple[int, int, int], num_classes: int, blobs: int, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """One volume ``(D, H, W)`` uint8, as a microscope's, and its class volume (0 = background).

    Each blob after the first is centred one radius from an earlier one, so blobs touch.
    """
    depth, height, width = shape
    zz, yy, xx = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    classes = np.zeros(shape, dtype=np.int64)
    centres: list[np.ndarray] = []
    for _ in range(blobs):
        radii = rng.uniform(0.15, 0.27, 3) * np.array([depth, height, width]) + 1.0
        if centres:  # next to an earlier blob, in a random direction
            direction = rng.normal(size=3)
            centre = centres[rng.integers(len(centres))] + direction / np.linalg.norm(direction) * radii
        else:
            centre = rng.uniform(0.3, 0.7, 3) * np.array(shape)
        centre = np.clip(centre, 0, np.array(shape) - 1)
        centres.append(centre)
        inside = ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 \
            + ((xx - centre[2]) / radii[2]) ** 2 <= 1
        classes[inside] = rng.integers(1, num_classes)
    levels = np.concatenate([[0.25], np.linspace(0.55, 0.85, num_classes - 1)])
    image = levels[classes].astype(np.float32)
    smooth = ndimage.gaussian_filter(rng.normal(size=shape), sigma=3) * 3.0
    image += (smooth + rng.normal(scale=noise, size=shape)).astype(np.float32) * 0.5
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), classes


class SyntheticBlobs3D(VolumeDataset):
    """Volumes of touching blobs in noise, generated from ``(seed, index)``: no files needed.

    Args:
        num_images: number of volumes.
        image_size: in-plane side (H = W); ``depth`` slices.
        num_classes: classes including background (semantic target); binary: blob vs background.
        target: ``binary`` or ``semantic`` (the task's labels, see ``conf/data/synthetic3d.yaml``).
        blobs: blobs per volume; ``noise``: std of the pixel noise (blob contrast is 0.3-0.6).
        seed: volumes of one seed are the same on every machine.
        samples_per_volume / spacing / transform: as ``VolumeDataset``.
    """

    def __init__(
        self,
        num_images: int = 8,
        image_size: int = 64,
        depth: int = 32,
        num_classes: int = 3,
        target: str = "binary",
        blobs: int = 6,
        noise: float = 0.3,
        seed: int = 0,
        samples_per_volume: int = 1,
        spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
        transform=None,
    ):
        super().__init__(transform, samples_per_volume=samples_per_volume, spacing=spacing)
        if target not in TARGETS:
            raise ValueError(f"data.dataset.target={target!r} is not one of {list(TARGETS)}")
        if num_classes < 2:
            raise ValueError(f"data.dataset.num_classes={num_classes} must be >= 2 (background + blobs)")
        self.target = target
        self.class_names = ["background", "blob"] if target == "binary" else \
            ["background", *(f"blob{c}" for c in range(1, num_classes))]
        self.in_channels = 1
        self.num_images, self.shape = num_images, (depth, image_size, image_size)
        self.num_classes, self.blobs, self.noise, self.seed = num_classes, blobs, noise, seed

    @property
    def num_volumes(self) -> int:
        return self.num_images

    def load_volume(self, index: int) -> RawSample:
        rng = np.random.default_rng([self.seed, index])
        image, classes = render_blobs(rng, self.shape, self.num_classes, self.blobs, self.noise)
        mask = (classes > 0) if self.target == "binary" else classes
        mask = mask.astype(np.min_scalar_type(self.num_classes - 1))  # uint8: cheaper to crop and flip
        return RawSample(image=image[..., None], mask=mask, name=f"blobs{self.seed}_{index:04d}")
