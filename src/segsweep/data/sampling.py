"""Training order and augmentation randomness as functions of (seed, epoch, sample): resumable.

A plain ``shuffle=True`` loader draws its order, and loader workers their augmentation seeds,
from the process's global RNG when the epoch's iterator is created. A run resumed from a
checkpoint starts from another RNG state, so it would see other crops in other orders than the
uninterrupted run. Here the sampler derives each epoch's order from ``(seed, epoch)`` and hands
every index out together with its own augmentation seed, derived from ``(seed, epoch, index)``:
the same epoch gives the same batches and crops whether it runs first, after a resume, on any
number of loader workers, or on any DDP rank (Lightning shards this sampler's order without
reshuffling it). No library sampler does this: torch's samplers take one generator, not an epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Sampler


class SampleKey(NamedTuple):
    """What the sampler yields and ``SegmentationDataset.__getitem__`` accepts."""

    index: int
    augment_seed: int


def epoch_seed(*parts: int) -> int:
    """A 31-bit seed from integers, well mixed (``numpy.random.SeedSequence``)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


class EpochSampler(Sampler[SampleKey]):
    """Shuffled order and per-sample augmentation seeds that depend only on ``(seed, epoch)``.

    Args:
        length: number of samples.
        seed: the run's seed.
        current_epoch: returns the epoch being trained (the trainer's ``current_epoch``), read each
            time an epoch's iterator starts.
    """

    def __init__(self, length: int, seed: int, current_epoch: Callable[[], int]):
        self.length = length
        self.seed = int(seed)
        self.current_epoch = current_epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[SampleKey]:
        epoch = int(self.current_epoch())
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(self.length, generator=generator).tolist()
        for index in order:
            yield SampleKey(index, epoch_seed(self.seed, epoch, index))
