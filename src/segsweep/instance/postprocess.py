"""Predicted maps -> instances: one label image per input plus a class and a score per instance.

This is the prediction format both families share (bottom-up maps through marker-controlled
watershed, Mask R-CNN masks pasted by score), so metrics, overlays and reports treat them alike:
``Instances(labels, classes, scores)`` with ids ``1..n`` in ``labels`` and entry ``i - 1`` of
``classes`` / ``scores`` describing id ``i``. Mask R-CNN adds ``detections``: all its scored,
possibly overlapping masks, which mask AP ranks (the label image keeps those above the display
threshold).

Runs on CPU in numpy/scipy/scikit-image: one watershed of a 128 x 128 image takes about a
millisecond, far below the network's forward pass.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential, watershed

METHODS = ("watershed", "components")


class Instances(NamedTuple):
    """One image's instances: ``labels`` (H, W) int64, ids 1..n; ``classes`` (n,) int64;
    ``scores`` (n,) float32 in [0, 1]; ``detections``: ``None``, or ``(masks (m, H, W) bool,
    classes (m,), scores (m,))`` of every detection when they may overlap (Mask R-CNN), scored
    by mask AP in place of the label image's objects."""

    labels: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    detections: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber a label image's ids (any non-negative ints) to 1..n in id order; 0 stays 0.

    A lookup table over ``bincount``: 3.6x faster than scikit-image's ``relabel_sequential`` (a
    hash-based ``unique``; 51 vs 186 us on a 128 px image of ~290 objects), which validation calls
    hundreds of times an epoch; huge sparse ids (e.g. COCO ids) fall back to it. Ids already
    ``1..n`` (what ``split_objects``, ``describe`` and ``from_labels`` return) come back as they
    are, as int64, without the lookup: the result may then be ``labels`` itself, so copy it before
    writing into it.
    """
    return _sequential(labels)[0]


def _sequential(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sequential(labels)`` and its pixel count per id (``counts[k]``: pixels of id ``k``,
    ``counts[0]`` the background's), from the one ``bincount`` both need."""
    labels = np.asarray(labels, np.int64)
    if labels.size == 0 or labels.max(initial=0) > 4 * labels.size + 1024:
        labels = relabel_sequential(labels)[0].astype(np.int64)
        return labels, np.bincount(labels.ravel(), minlength=1)
    counts = np.bincount(labels.ravel(), minlength=1)
    present = counts > 0
    present[0] = False
    if present[1:].all():
        return labels, counts
    return (np.cumsum(present) * present)[labels], np.concatenate([counts[:1], counts[present]])


def _drop_small_objects(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects under ``min_size`` pixels, renumber the rest 1..n (one lookup for both)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return labels.astype(np.int64)
    keep = np.bincount(labels.ravel()) >= max(min_size, 1)
    keep[0] = False
    if keep[1:].all():
        return labels.astype(np.int64, copy=False)
    return (np.cumsum(keep) * keep)[labels]


def split_objects(
    foreground: np.ndarray,
    separator: np.ndarray,
    encoding: str = "core",
    method: str = "watershed",
    foreground_threshold: float = 0.5,
    seed_threshold: float = 0.5,
    min_size: int = 0,
) -> np.ndarray:
    """Probability maps ``(H, W)`` of one image -> label image (0 = background, ids 1..n).

    Args:
        encoding: which map ``separator`` is (``core``/``distance``: high inside objects;
            ``boundary``: high on object borders).
        method: ``watershed``: seeds = connected components of the confident inner parts
            (``separator > seed_threshold``, or ``< seed_threshold`` for ``boundary``) grown over
            the foreground by watershed; foreground blobs without a seed become objects as they
            are. ``components``: connected components of the foreground (objects never touch,
            e.g. ISBI cell interiors split by membranes).
        foreground_threshold: probability above which a pixel belongs to some object.
        seed_threshold: threshold on the separator map for the seeds (see ``method``).
        min_size: objects smaller than this many pixels are dropped (noise).
    """
    if method not in METHODS:
        raise ValueError(f"task.postprocess.method={method!r} is not one of {list(METHODS)}")
    mask = foreground > foreground_threshold
    if method == "components":
        return _drop_small_objects(ndi.label(mask)[0], min_size)
    if encoding == "boundary":
        seeds, elevation = mask & (separator < seed_threshold), separator
    else:
        seeds, elevation = mask & (separator > seed_threshold), -separator
    markers, count = ndi.label(seeds)
    if not count:  # no seed: every foreground blob is an object as it is
        return _drop_small_objects(ndi.label(mask)[0], min_size)
    labels = watershed(elevation, markers, mask=mask)  # ids 1..count, every seed keeps its id
    # Foreground the seeds missed (small or faint objects) still counts, as its own objects.
    leftover, extra = ndi.label(mask & (labels == 0))
    if extra:
        labels = np.where(leftover > 0, leftover + count, labels)
    return _drop_small_objects(labels, min_size)


def split_batch(
    foregrounds: Sequence[np.ndarray],
    separators: Sequence[np.ndarray],
    encoding: str = "core",
    workers: int | None = None,
    **options,
) -> list[np.ndarray]:
    """``split_objects`` of every image of a batch (``(N, H, W)`` maps), ``workers`` images at a
    time; the same label images as the calls one by one, in order.

    The watershed is the largest part of the post-processing left on large images full of objects
    (ISBI slices: about half, docs/benchmarks.md). Threads, not processes: scikit-image's watershed runs its
    flooding loop without the GIL, so images of a batch flood in parallel without pickling maps to
    other processes, and it is safe wherever validation runs (DDP ranks, next to data-loader worker
    processes, after CUDA is initialised: nothing forks). ``workers``: ``None`` = as many as the
    process's torch threads (its CPU share: 1 under the tests, 1 per rank for DDP on CPU), capped
    by the batch and the usable cores; ``0`` or ``1``: in this thread.
    """
    if workers is None:
        workers = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(int(workers), len(foregrounds), cores))
    jobs = list(zip(foregrounds, separators, strict=True))
    if workers == 1:
        return [split_objects(f, s, encoding, **options) for f, s in jobs]
    return list(_pool(workers).map(lambda job: split_objects(job[0], job[1], encoding, **options), jobs))


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """One thread pool per size for the process's lifetime (idle threads cost nothing)."""
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="segsweep-watershed")
        return _POOLS[workers]


def _forget_pools_after_fork() -> None:
    """A forked child (a data-loader worker) inherits the pools but none of their threads, and
    maybe a held lock: it starts its own if it ever needs one."""
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools_after_fork)


def describe(
    labels: np.ndarray, foreground: np.ndarray, class_probs: np.ndarray | None = None
) -> Instances:
    """Score each object by its mean foreground probability; class by summed class probabilities
    (``class_probs`` ``(C, H, W)``: channel ``k`` is object class ``k + 1``; class 1 for every object
    when ``None``)."""
    labels, counts = _sequential(labels)
    n = len(counts) - 1
    if n == 0:
        return Instances(labels, np.zeros(0, np.int64), np.zeros(0, np.float32))
    # What ndi.mean / ndi.sum compute for ids 1..n (one bincount each, the same values to the bit),
    # without their per-call checks and index lookups.
    flat = labels.ravel()
    sums = np.bincount(flat, weights=np.asarray(foreground).ravel(), minlength=n + 1)[1:]
    scores = np.asarray(sums / counts[1:].astype(np.float64), np.float32)
    if class_probs is None or class_probs.shape[0] < 2:
        classes = np.ones(n, np.int64)
    else:
        votes = np.stack(
            [np.bincount(flat, weights=np.asarray(p).ravel(), minlength=n + 1)[1:] for p in class_probs],
            axis=1,
        )
        classes = votes.argmax(1).astype(np.int64) + 1
    return Instances(labels, classes, scores)


def from_labels(
    labels: np.ndarray, semantic: np.ndarray | None = None, ignore_index: int | None = None
) -> Instances:
    """True instances: any ids renumbered 1..n, class = the most frequent ``semantic`` class under
    each object (ignored and background pixels aside; class 1 when ``semantic`` is ``None``)."""
    labels = sequential(labels)
    n = int(labels.max())
    classes = np.ones(n, np.int64)
    if semantic is not None and n:
        semantic = np.asarray(semantic, np.int64)
        valid = (labels > 0) & (semantic > 0) & (semantic != ignore_index)
        num = int(semantic[valid].max(initial=1)) + 1
        votes = np.bincount(labels[valid] * num + semantic[valid], minlength=(n + 1) * num)
        votes = votes.reshape(n + 1, num)[1:]
        classes = np.where(votes.any(1), votes.argmax(1), 1).astype(np.int64)
    return Instances(labels, classes, np.ones(n, np.float32))


def paste_masks(
    masks: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    mask_threshold: float = 0.5,
    score_threshold: float = 0.5,
) -> Instances:
    """Mask R-CNN output -> ``Instances``.

    ``masks`` (n, 1, H, W) probabilities, binarised at ``mask_threshold``. The label image holds
    the detections scoring at least ``score_threshold`` (the display threshold of overlays and
    predictions), pasted in ascending score order so the higher score wins where they overlap;
    detections left with no pixel are dropped. ``detections`` keeps every detection, whatever its
    score, for mask AP (COCO ranks all of them).
    """
    height, width = masks.shape[-2:]
    binary = masks.detach().cpu()[:, 0] > mask_threshold
    scores, classes = scores.detach().cpu(), classes.detach().cpu()
    labels = torch.zeros((height, width), dtype=torch.int64)
    order = torch.argsort(scores)
    order = order[scores[order] >= score_threshold]
    for rank, i in enumerate(order.tolist(), start=1):
        labels[binary[i]] = rank
    labels_np = labels.numpy()
    kept = np.unique(labels_np[labels_np > 0])
    source = order.numpy()[kept - 1]  # detection index of each kept id, in id order
    return Instances(
        sequential(labels_np),
        classes.numpy()[source].astype(np.int64),
        scores.numpy()[source].astype(np.float32),
        (binary.numpy(), classes.numpy().astype(np.int64), scores.numpy().astype(np.float32)),
    )
