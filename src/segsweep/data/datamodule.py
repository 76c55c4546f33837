"""One LightningDataModule over any dataset config: splits, transforms, loaders, padded batches."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.seed import pl_worker_init_function
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from segsweep.data.base import SegmentationDataset

STAGES = ("train", "val", "test")


def pad_collate(batch: list[dict], ignore_index: int) -> dict:
    """Stack samples of different sizes: images padded with 0, masks with ``ignore_index``.

    Validation and test run on whole images, which may differ in size within a batch; padded
    pixels are ignored by the loss and the metrics, so they change no number.
    """
    height = max(item["image"].shape[-2] for item in batch)
    width = max(item["image"].shape[-1] for item in batch)
    out: dict = {"name": [item["name"] for item in batch]}
    for key, fill in (("image", 0.0), ("mask", ignore_index), ("instances", 0)):
        if key in batch[0]:
            out[key] = torch.stack([
                F.pad(item[key], (0, width - item[key].shape[-1], 0, height - item[key].shape[-2]), value=fill)
                for item in batch
            ])
    return out


def seed_worker(worker_id: int) -> None:
    """Seed a loader worker: Lightning's per-worker seeding, plus the albumentations pipeline,
    which keeps its own generator (copied into every worker, it would repeat the same crops and
    flips in each)."""
    pl_worker_init_function(worker_id)
    transform = torch.utils.data.get_worker_info().dataset.transform
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(torch.initial_seed() % 2**32)


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
        self.pin_memory = pin_memory
        if context_slices < 0:
            raise ValueError(f"data.context_slices={context_slices} must be >= 0")
        self.input_options = {"add_coords": bool(add_coords), "context_slices": int(context_slices)}
        self.datasets: dict[str, SegmentationDataset] = {}

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

    def _loader(self, stage: str) -> DataLoader:
        train = stage == "train"
        dataset = self.build(stage)
        sampler = None
        if not train and self.trainer is not None and self.trainer.world_size > 1:
            # Lightning's default DistributedSampler pads the last batch with repeated samples,
            # which would count them twice in the synced metrics: shard without repeats instead.
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=False
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            sampler=sampler,
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_worker if self.num_workers > 0 else None,
            pin_memory=self.pin_memory,
            collate_fn=functools.partial(pad_collate, ignore_index=self.ignore_index),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if "test" in self.split_args else "val")
