"""Built-in synthetic data: shapes on textured, noisy backgrounds, rendered from a seed.

One generator gives the binary, semantic and instance targets, so all tasks train on the same
images. Objects touch and overlap on purpose (the hard cases of instance segmentation); each has
its own intensity offset, texture and a thin darker rim, so touching objects of one class stay
separable by eye, like nuclei.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage import draw, measure

from segsweep.data.base import RawSample, SegmentationDataset

SHAPES = ("disc", "rectangle", "triangle", "cross", "star")  # class id = index + 1
TARGETS = ("binary", "semantic", "instance")


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Noise in [-1, 1], wavelength about size / cells: a random grid, smoothly upsampled."""
    grid = rng.uniform(-1, 1, (cells + 1, cells + 1))

    def weights(n: int) -> np.ndarray:  # (n, cells + 1) smoothstep interpolation matrix
        t = np.linspace(0, cells, n)
        lo = np.minimum(t.astype(int), cells - 1)
        f = t - lo
        f = f * f * (3 - 2 * f)
        w = np.zeros((n, cells + 1))
        w[np.arange(n), lo], w[np.arange(n), lo + 1] = 1 - f, f
        return w

    return weights(height) @ grid @ weights(width).T


def _shape_pixels(kind: int, radius: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Row/col offsets of one filled, randomly rotated shape centred on (0, 0).

    ``radius`` is the radius of the disc of equal area, so the size says nothing about the class.
    """
    half = int(np.ceil(1.6 * radius)) + 1
    box, angle = (2 * half + 1, 2 * half + 1), rng.uniform(0, 2 * np.pi)
    if kind == 0:  # nearly round ellipse
        semi = radius * rng.uniform(0.7, 1.0) ** np.array([-0.5, 0.5])
        rr, cc = draw.ellipse(half, half, semi[0], semi[1], box, rotation=angle)
        return rr - half, cc - half
    if kind == 1:  # rectangle, aspect 0.5..1
        aspect = rng.uniform(0.5, 1.0)
        hx, hy = radius * (np.pi / aspect) ** 0.5 / 2, radius * (np.pi * aspect) ** 0.5 / 2
        x, y = np.array([-hx, hx, hx, -hx]), np.array([-hy, -hy, hy, hy])
    elif kind == 2:  # roughly equilateral triangle (circumradius 1.555 r), corners jittered
        t = np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.15, 0.15, 3)
        x, y = 1.555 * radius * np.cos(t), 1.555 * radius * np.sin(t)
    elif kind == 3:  # plus sign, arm half-width 0.35 of the arm length
        a, b = 1.166 * radius, 0.408 * radius
        x = np.array([b, a, a, b, b, -b, -b, -a, -a, -b, -b, b])
        y = np.array([b, b, -b, -b, -a, -a, -b, -b, b, b, a, a])
    else:  # five-pointed star, inner radius 0.45 of the outer
        t = np.arange(10) * np.pi / 5
        rho = 1.541 * radius * np.where(np.arange(10) % 2, 0.45, 1.0)
        x, y = rho * np.cos(t), rho * np.sin(t)
    cos, sin = np.cos(angle), np.sin(angle)
    rr, cc = draw.polygon(half + sin * x + cos * y, half + cos * x - sin * y, box)
    return rr - half, cc - half


def _inside(dr, dc, cy, cx, shape) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of a shape centred on (cy, cx) that fall inside the image."""
    rows, cols = dr + cy, dc + cx
    ok = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    return rows[ok], cols[ok]


def _touching_centre(inst, j, dr, dc, rng) -> tuple[int, int]:
    """A centre where the shape is 4-adjacent to object ``j`` without covering any of it.

    Start on a visible pixel of ``j`` and walk away in 4-connected one-pixel steps along a random
    direction: the first position clear of ``j`` is one step from one covering it, so they touch.
    """
    ys, xs = np.nonzero(inst == j)
    p = int(rng.integers(ys.size))
    cy, cx, theta = int(ys[p]), int(xs[p]), rng.uniform(0, 2 * np.pi)
    dy, dx, acc_y, acc_x = np.sin(theta), np.cos(theta), 0.0, 0.0
    # Padded so the walk needs no bounds checks: it stops before the shape fully leaves the frame.
    pad = 2 * max(np.abs(dr).max(), np.abs(dc).max()) + 2
    mask = np.pad(inst == j, pad)
    while mask[dr + (cy + pad), dc + (cx + pad)].any():
        acc_y, acc_x = acc_y + abs(dy), acc_x + abs(dx)
        if acc_y >= acc_x:
            cy, acc_y = cy + (1 if dy > 0 else -1), acc_y - 1
        else:
            cx, acc_x = cx + (1 if dx > 0 else -1), acc_x - 1
    return cy, cx


def _splits(inst, ids) -> bool:
    """Whether any object of ``ids`` is now in more than one 4-connected piece."""
    return any(ndimage.label(inst == j)[1] > 1 for j in ids if j > 0)


def _largest_pieces(inst) -> np.ndarray:
    """Keep each object's largest 4-connected piece (image-border clipping can cut one in two)."""
    pieces = measure.label(inst, background=0, connectivity=1)
    if pieces.max() == np.count_nonzero(np.bincount(inst.ravel())[1:]):
        return inst
    size = np.bincount(pieces.ravel())
    owner = np.zeros(size.size, np.int64)
    owner[pieces.ravel()] = inst.ravel()
    order = np.lexsort((size, owner))  # by object, then size: each object's last is its largest
    keep = np.zeros(size.size, bool)
    keep[order[np.r_[owner[order][1:] != owner[order][:-1], True]]] = True
    keep[0] = False
    return np.where(keep[pieces], inst, 0)


def _appearance(rng, inst) -> np.ndarray:
    """The image of a label map: textured background, objects with offset, texture and rim.

    The background is a smooth field (tint + low-frequency noise + gradient); each object adds
    its own offset to it (one polarity per image, some objects flipped), so the contrast is local
    and no global threshold separates objects from background. A darker rim on every object
    border, and different offsets, keep touching objects apart.
    """
    (height, width), n = inst.shape, int(inst.max())
    yy, xx = np.linspace(-0.5, 0.5, height)[:, None], np.linspace(-0.5, 0.5, width)[None, :]
    slope = rng.uniform(-40, 40, 2)
    field = 30 * _smooth_noise(rng, height, width, 3) + slope[0] * yy + slope[1] * xx
    grey = rng.uniform(80, 175)
    sign = (1.0 if grey < 125 else -1.0) * np.where(rng.random(n) < 0.2, -1.0, 1.0)
    offset = np.concatenate([[0.0], sign * rng.uniform(40, 75, n)])
    # One texture field, scaled per object: neighbours show different amounts of it.
    texture = _smooth_noise(rng, height, width, max(2, min(height, width) // 8))
    amount = np.concatenate([[0.0], rng.uniform(0, 22, n)])
    plane = grey + field + offset[inst] + amount[inst] * texture
    pad = np.pad(inst, 1, mode="edge")  # edge padding: no rim where an object leaves the frame
    rim = (pad[:-2, 1:-1] != inst) | (pad[2:, 1:-1] != inst)
    rim |= (pad[1:-1, :-2] != inst) | (pad[1:-1, 2:] != inst)
    plane[rim & (inst > 0)] -= rng.uniform(25, 45)
    tint = rng.uniform(-15, 15, 3).astype(np.float32)
    image = plane.astype(np.float32)[..., None] + tint
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(4, 12))
    return np.clip(image, 0, 255).astype(np.uint8)


def render_shapes(
    seed: int | Sequence[int],
    size: int | Sequence[int],
    num_classes: int = 3,
    max_objects: int = 8,
    touching_fraction: float = 0.35,
    overlap_fraction: float = 0.15,
    radius_range: tuple[float, float] = (0.06, 0.13),
    min_visible: int = 12,
    min_visible_fraction: float = 0.3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one image: ``(image (H, W, 3) uint8, semantic (H, W) int64, instances (H, W) int64)``.

    Args:
        seed: anything ``np.random.default_rng`` takes; the same seed gives the same arrays.
        size: ``H`` (square) or ``(H, W)``.
        num_classes: number of shape kinds used: classes ``1..num_classes`` are ``SHAPES`` in
            order (0 is background).
        max_objects: objects drawn per image (between ``max_objects // 2`` and this, before
            occlusion); each gets a random size (equal-area radius a fraction of the image side
            in ``radius_range``), rotation and position.
        touching_fraction: share of objects slid against an earlier one until they just touch
            (4-adjacent, no overlap).
        overlap_fraction: share of objects drawn across the edge of an earlier one, occluding it
            (a placement that would cut an earlier object in two is skipped).
        min_visible / min_visible_fraction: an object left with fewer visible pixels than either
            bound (a count, or a share of its full area) is removed from image and targets.
    """
    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes={num_classes} must be in 1..{len(SHAPES)} (shapes {SHAPES})")
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    rng = np.random.default_rng(seed)
    inst = np.zeros((height, width), np.int64)
    classes, areas, radii, centres = [0], [1], [0.0], [(0, 0)]  # per object id, 0 = background
    for _ in range(int(rng.integers(max(1, max_objects // 2), max_objects + 1))):
        k, kind = len(classes), int(rng.integers(num_classes))
        radius = max(3.0, rng.uniform(*radius_range) * min(height, width))
        dr, dc = _shape_pixels(kind, radius, rng)
        present = np.flatnonzero(np.bincount(inst.ravel(), minlength=k)[1:]) + 1
        mode, j = rng.random(), int(rng.choice(present)) if present.size else 0
        if j and mode < touching_fraction:
            cy, cx = _touching_centre(inst, j, dr, dc, rng)
        elif j and mode < touching_fraction + overlap_fraction:
            theta, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 0.95) * (radius + radii[j])
            cy = centres[j][0] + round(dist * np.sin(theta))
            cx = centres[j][1] + round(dist * np.cos(theta))
        else:  # free: a few tries to land on empty background
            for _ in range(8):
                cy, cx = int(rng.integers(height)), int(rng.integers(width))
                if not inst[_inside(dr, dc, cy, cx, inst.shape)].any():
                    break
        rows, cols = _inside(dr, dc, cy, cx, inst.shape)
        covered = inst[rows, cols]
        inst[rows, cols] = k
        if _splits(inst, np.unique(covered)):  # an occluder cutting an object in two looks odd
            inst[rows, cols] = covered
            continue
        classes.append(kind + 1)
        areas.append(dr.size)  # the full area, so objects mostly out of frame count as hidden
        radii.append(radius)
        centres.append((cy, cx))

    inst = _largest_pieces(inst)
    # Drop barely visible objects (slivers, mostly hidden or out of frame), then number 1..n.
    visible = np.bincount(inst.ravel(), minlength=len(classes))
    kept = visible >= np.maximum(min_visible, min_visible_fraction * np.asarray(areas))
    kept[0] = False
    inst = np.where(kept, np.cumsum(kept), 0)[inst]
    semantic = np.concatenate([[0], np.asarray(classes)[kept]])[inst]
    return _appearance(rng, inst), semantic.astype(np.int64), inst.astype(np.int64)


class SyntheticShapes(SegmentationDataset):
    """Shapes on textured, noisy backgrounds (``render_shapes``), generated on the fly.

    Args:
        num_images: number of images in this split.
        image_size: side of the square images, or ``[H, W]``.
        num_classes: number of shape kinds (1..5: disc, rectangle, triangle, cross, star).
        target: ``binary`` (mask 1 = any shape), ``semantic`` (mask = shape class, 0 =
            background) or ``instance`` (semantic mask plus ``instances``, one id per object).
        seed: base seed; image ``i`` is drawn from ``(seed, i)``, so splits with different seeds
            never share an image.
        max_objects: most objects drawn per image (at least half of it are drawn).
        touching_fraction / overlap_fraction: share of objects placed touching / overlapping an
            earlier one.
        cache: keep rendered samples in memory (8 bytes per pixel: 46 MB for the default
            352 images of 128 x 128). Rendering takes a few ms per image, but a CPU training
            epoch would otherwise spend several percent of its time re-rendering. Samples are
            copies of the cached arrays, in their compact types (uint8 masks, int32 instances).
    """

    def __init__(
        self,
        num_images: int,
        image_size: int | Sequence[int] = 128,
        num_classes: int = 3,
        target: str = "binary",
        seed: int = 0,
        transform=None,
        max_objects: int = 8,
        touching_fraction: float = 0.35,
        overlap_fraction: float = 0.15,
        cache: bool = True,
    ):
        super().__init__(transform)
        if target not in TARGETS:
            raise ValueError(f"SyntheticShapes target={target!r} is not one of {list(TARGETS)}")
        if not 1 <= num_classes <= len(SHAPES):
            raise ValueError(
                f"SyntheticShapes num_classes={num_classes} must be in 1..{len(SHAPES)} "
                f"(shape kinds: {list(SHAPES)})"
            )
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or min(size) < 16:
            raise ValueError(
                f"SyntheticShapes image_size={image_size!r} must be >= 16 or [H, W] >= 16"
            )
        if num_images < 1:
            raise ValueError(f"SyntheticShapes num_images={num_images} must be >= 1")
        if seed < 0:  # numpy seeds are non-negative
            raise ValueError(f"SyntheticShapes seed={seed} must be >= 0")
        if max_objects < 1:
            raise ValueError(f"SyntheticShapes max_objects={max_objects} must be >= 1")
        if min(touching_fraction, overlap_fraction) < 0 or touching_fraction + overlap_fraction > 1:
            raise ValueError(
                f"SyntheticShapes touching_fraction={touching_fraction} and overlap_fraction="
                f"{overlap_fraction} must be >= 0 with a sum <= 1"
            )
        self.num_images, self.size, self.target, self.seed = num_images, size, target, seed
        self.render_args = dict(
            num_classes=num_classes,
            max_objects=max_objects,
            touching_fraction=touching_fraction,
            overlap_fraction=overlap_fraction,
        )
        self.class_names = (
            ["background", "shape"] if target == "binary" else ["background", *SHAPES[:num_classes]]
        )
        self.ignore_index = 255  # no ignored pixels here; kept for the data contract
        self.cache: dict[int, tuple[np.ndarray, ...]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.num_images

    def load(self, index: int) -> RawSample:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} synthetic images")
        arrays = None if self.cache is None else self.cache.get(index)
        if arrays is None:
            # Seeding with (seed, index) gives independent streams per image and per split.
            image, semantic, inst = render_shapes((self.seed, index), self.size, **self.render_args)
            # Compact dtypes (class ids < 6, few objects per image): cheap to keep and to augment.
            arrays = (image, semantic.astype(np.uint8), inst.astype(np.int32))
            if self.cache is not None:
                self.cache[index] = arrays
        image, semantic, inst = arrays  # copied below: a transform must never change cached arrays
        return RawSample(
            image=image.copy(),
            mask=(semantic > 0).view(np.uint8) if self.target == "binary" else semantic.copy(),
            name=f"synthetic_{self.seed}_{index:05d}",
            instances=inst.copy() if self.target == "instance" else None,
        )
