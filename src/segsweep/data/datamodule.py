"""One LightningDataModule over any dataset config: splits, transforms, loaders, padded batches."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator, Mapping

import lightning as L
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from segsweep.data.base import SegmentationDataset, seed_augmentations
from segsweep.data.preprocess import decode, finish_batch
from segsweep.data.sampling import EpochSampler

STAGES = ("train", "val", "test")
MAX_GPU_WORKERS = 8  # loader workers per GPU on GPU runs; more rarely help and cost memory


def pad_collate(batch: list[dict], ignore_index: int) -> dict:
    """Stack samples of different sizes: images padded with 0, masks with ``ignore_index``.

    Padded pixels are ignored by the loss and the metrics, but a padded image's logits differ
    from its own (convolutions see the padding): evaluation loaders never pad (``SameSizeBatches``).
    """
    height = max(item["image"].shape[-2] for item in batch)
    width = max(item["image"].shape[-1] for item in batch)
    compact = ["image_table" in item for item in batch]
    if any(compact) and (not all(compact) or len({item["image"].shape for item in batch}) > 1):
        # Compact images are padded as what they stand for: decoded here, padded with 0.0.
        batch = [decoded(item) for item in batch]
    out: dict = {"name": [item["name"] for item in batch]}
    for key, fill in (("image", 0.0), ("mask", ignore_index), ("instances", 0)):
        if key in batch[0]:
            out[key] = stack_padded([item[key] for item in batch], height, width, fill)
    if "image_table" in batch[0]:
        out["image_table"] = batch[0]["image_table"]
    return out


def decoded(item: dict) -> dict:
    """An item with its compact image decoded (``segsweep.data.preprocess.decode``)."""
    if "image_table" not in item:
        return item
    item = dict(item)
    item["image"] = decode(item["image"], item.pop("image_table"), channel_axis=0)
    return item


def stack_padded(tensors: list[torch.Tensor], height: int, width: int, fill: float) -> torch.Tensor:
    """``tensors`` stacked, each padded at the bottom and right to ``(height, width)`` with ``fill``.

    One copy of the data: in a loader worker straight into shared memory, as torch's
    ``default_collate`` does, so the batch reaches the training process without another copy of
    it (a 16 x 3 x 512 x 512 float32 batch is 50 MB).
    """
    first = tensors[0]
    shape = (len(tensors), *first.shape[:-2], height, width)
    out = None
    if torch.utils.data.get_worker_info() is not None:
        storage = first._typed_storage()._new_shared(math.prod(shape), device=first.device)
        out = first.new(storage).view(shape)
    if all(t.shape[-2:] == (height, width) for t in tensors):
        return torch.stack(tensors, out=out)
    out = (first.new_empty(shape) if out is None else out).fill_(fill)
    for i, tensor in enumerate(tensors):
        out[i, ..., : tensor.shape[-2], : tensor.shape[-1]] = tensor
    return out


class SameSizeBatches(DistributedSampler):
    """Evaluation batches: each image on exactly one rank, batched only with images of its size.

    Rank ``r`` of ``W`` takes images ``r, r + W, r + 2W, ...`` (no padding with repeats, which
    would count images twice in synced metrics), then groups them by size in dataset order,
    at most ``batch_size`` a batch. Padding a small image up to a bigger one's size would change
    its logits (convolutions see the padding), and with them the metrics, whenever
    ``eval_batch_size`` or the number of ranks changed. A ``DistributedSampler`` so that Lightning
    keeps it as the sharding sampler; it yields lists of indices (the loader's ``batch_size`` is
    ``None`` and its dataset a ``BatchView``).
    """

    def __init__(self, dataset, batch_size: int, size_of: Callable[[int], tuple[int, ...]],
                 num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        shard = list(range(rank, len(dataset), num_replicas))
        groups: dict[tuple[int, ...], list[int]] = {}
        for index in shard:  # batch size 1 needs no sizes (loading them costs a pass over the data)
            groups.setdefault(size_of(index) if batch_size > 1 else (), []).append(index)
        self.batches = [group[i : i + batch_size] for group in groups.values()
                        for i in range(0, len(group), batch_size)]
        self.num_samples = len(shard)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BatchView(Dataset):
    """A dataset indexed by lists of indices: ``view[[i, j]] == [dataset[i], dataset[j]]``."""

    def __init__(self, dataset: SegmentationDataset):
        self.dataset = dataset

    @property
    def transform(self):  # what seed_worker seeds in each loader worker
        return self.dataset.transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: list[int]) -> list[dict]:
        return [self.dataset[i] for i in indices]


def seed_worker(worker_id: int) -> None:
    """Seed a loader worker: Lightning's per-worker seeding, plus the albumentations pipeline,
    which keeps its own generator (copied into every worker, it would repeat the same crops and
    flips in each)."""
    pl_worker_init_function(worker_id)
    seed_augmentations(torch.utils.data.get_worker_info().dataset.transform, torch.initial_seed() % 2**32)


class SegmentationDataModule(L.LightningDataModule):
    """Builds train/val/test datasets from one dataset factory and per-split arguments.

    Args:
        dataset: a ``_partial_`` dataset class (``FolderDataset``, ``SyntheticShapes``, ...).
        splits: split name -> keyword arguments for that split (e.g. ``{split: val}`` or
            ``{num_images: 64, seed: 1}``); ``test`` is optional.
        root: passed to the dataset as ``root`` when set (``data.root=`` on the command line).
        train_transform / eval_transform: albumentations pipelines from the ``augment`` group.
        batch_size: training batch size per device; ``eval_batch_size`` for val/test.
        add_coords: append normalised x/y pixel-coordinate channels of the original image.
        context_slices: 2.5D input for stacks of consecutive slices: slice s gets its ``k``
            neighbours on each side as extra channels (mirrored at the stack's ends).
        seed: the training order and augmentations of epoch ``e`` follow from ``(seed, e)``.
        compact_batches: loaders carry uint8 images (and uint8 masks) to the device, where
            ``on_after_batch_transfer`` finishes them (the pipeline's last lookup, to the bit):
            a fifth of the bytes of a 512 px sample through shared and pinned memory (1 MB, not
            5). ``None``: on GPU runs (CPU runs keep float32 batches).
    """

    def __init__(
        self,
        dataset: Callable[..., SegmentationDataset],
        splits: Mapping[str, Mapping],
        root: str | None = None,
        train_transform=None,
        eval_transform=None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        add_coords: bool = False,
        context_slices: int = 0,
        seed: int = 0,
        compact_batches: bool | None = None,
    ):
        super().__init__()
        unknown = set(splits) - set(STAGES)
        if unknown or not {"train", "val"} <= set(splits):
            raise ValueError(f"data.splits has {sorted(splits)}; it needs train and val, optionally test")
        self.dataset_factory = dataset
        self.split_args = {name: dict(args or {}) for name, args in splits.items()}
        self.root = root
        self.transforms = {"train": train_transform, "val": eval_transform, "test": eval_transform}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.pin_memory = pin_memory
        self.compact_batches = compact_batches
        if context_slices < 0:
            raise ValueError(f"data.context_slices={context_slices} must be >= 0")
        self.input_options = {"add_coords": bool(add_coords), "context_slices": int(context_slices)}
        self.datasets: dict[str, SegmentationDataset] = {}
        self._eval_sizes: dict[str, dict[int, tuple[int, ...]]] = {}

    def build(self, stage: str, transform="default") -> SegmentationDataset:
        """The dataset of one split, built once (``transform`` overrides the split's pipeline)."""
        if stage not in self.split_args:
            raise ValueError(f"no {stage!r} split in data.splits (it has {sorted(self.split_args)})")
        custom = transform != "default"
        if custom or stage not in self.datasets:
            kwargs = dict(self.split_args[stage])
            if self.root is not None:
                kwargs["root"] = self.root
            dataset = self.dataset_factory(transform=transform if custom else self.transforms[stage], **kwargs)
            if self.input_options["context_slices"] and not getattr(dataset, "supports_context", False):
                raise ValueError(
                    f"data.context_slices needs a dataset of consecutive slices (FolderDataset); "
                    f"{type(dataset).__name__} has none"
                )
            for name, value in self.input_options.items():
                setattr(dataset, name, value)
            if len(dataset) == 0:
                raise ValueError(f"the {stage!r} split of data is empty ({kwargs})")
            if custom:
                return dataset
            self.datasets[stage] = dataset
        return self.datasets[stage]

    # What the task needs to know about the data, read from the training split.
    @property
    def class_names(self) -> list[str]:
        return list(self.build("train").class_names)

    @property
    def ignore_index(self) -> int:
        return int(self.build("train").ignore_index)

    @property
    def in_channels(self) -> int:
        """Channels the model takes (coordinates and context slices included)."""
        return int(self.build("train").input_channels)

    def setup(self, stage: str | None = None) -> None:
        test = "test" if "test" in self.split_args else "val"
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": (test,)}.get(stage, ())
        for split in needed:
            # Load and augment one sample now, so bad files or a too-large crop fail before training.
            self.build(split)[0]

    def on_gpu(self) -> bool:
        return self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Compact batches finished on the device (``finish_batch``); others pass as they are."""
        return finish_batch(batch)

    def loader_options(self) -> dict:
        """Workers and memory pinning of every loader. On GPU runs memory is pinned (faster,
        asynchronous copies to the GPU) and at least one worker per CPU of this rank, less one
        for the rank itself, up to ``MAX_GPU_WORKERS``, prepares batches: a GPU step is too short
        for the training process to augment its own. The CPUs are this process's share (its
        affinity: ``hydra/launcher=gpus`` gives each job its own) split among the node's ranks."""
        workers, pin = self.num_workers, self.pin_memory
        if self.on_gpu():
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            workers = max(workers, min(cpus // max(self.trainer.num_devices, 1) - 1, MAX_GPU_WORKERS))
            pin = True
        return {"num_workers": workers, "persistent_workers": workers > 0,
                "worker_init_fn": seed_worker if workers > 0 else None, "pin_memory": pin}

    def _loader(self, stage: str) -> DataLoader:
        train = stage == "train"
        dataset = self.build(stage)
        dataset.compact_batches = self.on_gpu() if self.compact_batches is None else bool(self.compact_batches)
        if not train:
            return self._eval_loader(stage, dataset)
        sampler = None
        if train:  # order and augmentations from (seed, epoch): resumed runs repeat them exactly
            sampler = EpochSampler(len(dataset), self.seed, lambda: self.trainer.current_epoch if self.trainer else 0)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            drop_last=train and len(dataset) > self.batch_size,
            **self.loader_options(),
            collate_fn=functools.partial(pad_collate, ignore_index=self.ignore_index),
        )

    def _eval_loader(self, stage: str, dataset: SegmentationDataset) -> DataLoader:
        """Whole images, each on one rank, batched only with images of its own size."""
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        sizes = self._eval_sizes.setdefault(stage, {})

        def size_of(index: int) -> tuple[int, ...]:
            if index not in sizes:  # datasets do not say their sizes: load the image once
                sizes[index] = tuple(dataset[index]["image"].shape[1:])  # (H, W) or (D, H, W)
            return sizes[index]

        batches = SameSizeBatches(dataset, self.eval_batch_size, size_of, num_replicas=world, rank=rank)
        return DataLoader(
            BatchView(dataset),
            batch_size=None,  # the sampler yields whole batches
            sampler=batches,
            **self.loader_options(),
            collate_fn=functools.partial(pad_collate, ignore_index=self.ignore_index),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if "test" in self.split_args else "val")
