"""Folder datasets, splits and the datamodule: good input works, bad input names its culprit."""

from __future__ import annotations

import functools
import zlib
from types import SimpleNamespace

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from segsweep.data import FolderDataset, SegmentationDataModule
from segsweep.data.datamodule import SameSizeBatches, pad_collate


def write_pair(root, stem, size=(24, 32), mask_values=(0, 255), channels=3, mask_size=None):
    rng = np.random.default_rng(zlib.crc32(stem.encode()))  # the same in every process (hash() is not)
    (root / "images").mkdir(exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    shape = (*size, channels) if channels > 1 else size
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / "images" / f"{stem}.png")
    mask = rng.choice(np.array(mask_values, dtype=np.uint8), size=mask_size or size)
    Image.fromarray(mask).save(root / "masks" / f"{stem}.png")


def folder(root, **kwargs):
    args = {"root": root, "images": "images", "masks": "masks", "class_names": ["bg", "fg"],
            "value_map": {0: 0, 255: 1}}
    return FolderDataset(**{**args, **kwargs})


def test_pairs_by_stem_and_maps_values(tmp_path):
    for stem in ("a", "b", "c"):
        write_pair(tmp_path, stem)
    dataset = folder(tmp_path, value_map={0: 1, 255: 0})  # ISBI: the dark value is the object
    assert len(dataset) == 3
    item = dataset[0]
    raw = np.asarray(Image.open(tmp_path / "masks" / "a.png"))
    assert item["name"] == "a"
    assert item["image"].shape == (3, 24, 32) and item["image"].dtype == torch.float32
    assert torch.equal(item["mask"], torch.from_numpy((raw == 0).astype(np.int64)))


def test_void_values_become_ignore_index(tmp_path):
    write_pair(tmp_path, "a", mask_values=(0, 1, 11))
    dataset = folder(tmp_path, class_names=["x", "y"], value_map=None, void_values=[11], ignore_index=255)
    raw = np.asarray(Image.open(tmp_path / "masks" / "a.png"))
    mask = dataset[0]["mask"].numpy()
    assert (mask[raw == 11] == 255).all() and (mask[raw != 11] == raw[raw != 11]).all()


def test_seeded_split_is_disjoint_and_repeatable(tmp_path):
    for i in range(10):
        write_pair(tmp_path, f"{i:02d}")
    train = folder(tmp_path, split="train", val_fraction=0.3, split_seed=3)
    val = folder(tmp_path, split="val", val_fraction=0.3, split_seed=3)
    names = lambda d: {p[0].stem for p in d.pairs}  # noqa: E731
    assert len(val) == 3 and len(train) == 7 and not names(train) & names(val)
    assert names(val) == names(folder(tmp_path, split="val", val_fraction=0.3, split_seed=3))
    assert names(val) != names(folder(tmp_path, split="val", val_fraction=0.3, split_seed=4))


def test_missing_mask_names_the_image(tmp_path):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b")
    (tmp_path / "masks" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"b\.png"):
        folder(tmp_path)


def test_mask_of_other_size_names_both_files(tmp_path):
    write_pair(tmp_path, "a", mask_size=(20, 32))
    with pytest.raises(ValueError, match=r"masks/a\.png.*\(20, 32\).*images/a\.png"):
        folder(tmp_path)[0]


def test_unknown_mask_value_names_file_and_value(tmp_path):
    write_pair(tmp_path, "a", mask_values=(0, 128, 255))
    with pytest.raises(ValueError, match=r"a\.png has values \[128\].*known values: \[0, 255\]"):
        folder(tmp_path)[0]


def test_corrupt_image_names_the_file(tmp_path):
    write_pair(tmp_path, "a")
    (tmp_path / "images" / "a.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"cannot read image file .*images/a\.png"):
        folder(tmp_path)[0]


def test_wrong_channel_count_names_file_and_key(tmp_path):
    write_pair(tmp_path, "a", channels=1)
    with pytest.raises(ValueError, match=r"a\.png has 1 channels but data.dataset.in_channels=3"):
        folder(tmp_path)[0]


def test_empty_folder_and_empty_split(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match="empty dataset"):
        folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        folder(tmp_path / "nowhere")


def test_value_map_to_unknown_class_is_rejected(tmp_path):
    write_pair(tmp_path, "a")
    with pytest.raises(ValueError, match=r"value_map maps to class ids \{255: 2\}"):
        folder(tmp_path, value_map={0: 0, 255: 2})


def datamodule(tmp_path, crop: int) -> SegmentationDataModule:
    return SegmentationDataModule(
        dataset=functools.partial(folder, tmp_path),
        splits={"train": {"split": "train", "val_fraction": 0.5}, "val": {"split": "val", "val_fraction": 0.5}},
        train_transform=A.Compose([A.RandomCrop(crop, crop), A.Normalize()]),
        eval_transform=A.Compose([A.Normalize()]),
        batch_size=2,
    )


def test_crop_larger_than_image_stops_at_setup(tmp_path):
    for stem in "abcd":
        write_pair(tmp_path, stem)
    dm = datamodule(tmp_path, crop=16)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"augmenting sample '.' .*augment.crop_size"):
        datamodule(tmp_path, crop=64).setup("fit")


def test_pad_collate_pads_masks_with_ignore_index():
    items = [
        {"image": torch.ones(1, 4, 6), "mask": torch.zeros(4, 6, dtype=torch.long), "name": "a"},
        {"image": torch.ones(1, 5, 3), "mask": torch.ones(5, 3, dtype=torch.long), "name": "b"},
    ]
    batch = pad_collate(items, ignore_index=255)
    assert batch["image"].shape == (2, 1, 5, 6) and batch["mask"].shape == (2, 5, 6)
    assert (batch["mask"][0, 4] == 255).all() and (batch["mask"][1, :, 3:] == 255).all()
    assert batch["image"][1, :, :, 3:].abs().sum() == 0 and batch["name"] == ["a", "b"]


def test_coordinate_channels_follow_the_crop(tmp_path):
    write_pair(tmp_path, "a", size=(20, 30))
    dataset = folder(tmp_path, transform=A.Compose([A.Crop(x_min=10, y_min=5, x_max=30, y_max=15), A.Normalize()]))
    dataset.add_coords = True
    item = dataset[0]
    assert item["image"].shape == (5, 10, 20) and dataset.input_channels == 5
    x, y = item["image"][3], item["image"][4]
    full_x, full_y = np.linspace(-1, 1, 30), np.linspace(-1, 1, 20)
    assert np.allclose(x[0].numpy(), full_x[10:30], atol=1e-6)  # the original image's x, not the crop's
    assert np.allclose(y[:, 0].numpy(), full_y[5:15], atol=1e-6)


def test_context_slices_stack_neighbours_mirrored_at_the_ends(tmp_path):
    for i in range(4):
        write_pair(tmp_path, f"{i:02d}", channels=1)
    dataset = folder(tmp_path, in_channels=1)
    dataset.context_slices = 1
    slices = [np.asarray(Image.open(tmp_path / "images" / f"{i:02d}.png"), np.float32) for i in range(4)]
    first, last = dataset[0]["image"].numpy(), dataset[3]["image"].numpy()
    assert dataset.input_channels == 3 and first.shape == (3, 24, 32)
    assert np.array_equal(first, np.stack([slices[1], slices[0], slices[1]]))  # s-1 mirrored to s+1
    assert np.array_equal(last, np.stack([slices[2], slices[3], slices[2]]))
    assert np.array_equal(dataset[1]["image"].numpy(), np.stack(slices[0:3]))


def test_context_slices_need_a_stack(tmp_path):
    from segsweep.data import SyntheticShapes

    dm = SegmentationDataModule(dataset=functools.partial(SyntheticShapes, num_images=2, image_size=32),
                                splits={"train": {}, "val": {}}, context_slices=1)
    with pytest.raises(ValueError, match="context_slices needs a dataset of consecutive slices"):
        _ = dm.in_channels


def cpu_trainer(world_size: int, rank: int) -> SimpleNamespace:
    """What the datamodule reads of a Trainer: a CPU rank ``rank`` of ``world_size``."""
    return SimpleNamespace(world_size=world_size, global_rank=rank, num_devices=world_size,
                           strategy=SimpleNamespace(root_device=torch.device("cpu")))


SIZES = {"a": (24, 32), "b": (16, 16), "c": (24, 32), "d": (16, 16), "e": (24, 32), "f": (20, 16), "g": (24, 32)}


def mixed_size_datamodule(tmp_path, eval_batch_size: int) -> SegmentationDataModule:
    for stem, size in SIZES.items():
        write_pair(tmp_path, stem, size=size)
    return SegmentationDataModule(
        dataset=functools.partial(folder, tmp_path),
        splits={"train": {"split": "all"}, "val": {"split": "all"}},
        eval_transform=A.Compose([A.Normalize()]),
        eval_batch_size=eval_batch_size,
    )


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_batches_hold_one_image_size_and_every_image_once(tmp_path, world_size):
    """7 images of 3 sizes: no batch pads one image up to another's size, no image repeats."""
    seen = []
    for rank in range(world_size):
        dm = mixed_size_datamodule(tmp_path, eval_batch_size=2)
        dm.trainer = cpu_trainer(world_size, rank)
        for batch in dm.val_dataloader():
            assert {SIZES[name] for name in batch["name"]} == {tuple(batch["image"].shape[-2:])}
            assert len(batch["name"]) <= 2 and (batch["mask"] != 255).all()  # nothing padded
            seen += batch["name"]
    assert sorted(seen) == sorted(SIZES)


def test_same_size_batches_by_hand():
    sizes = [(2, 2), (3, 3), (2, 2), (2, 2), (3, 3)]
    assert list(SameSizeBatches(range(5), 2, sizes.__getitem__)) == [[0, 2], [3], [1, 4]]
    # rank 1 of 2 takes images 1 and 3
    assert list(SameSizeBatches(range(5), 2, sizes.__getitem__, num_replicas=2, rank=1)) == [[1], [3]]
    # batches of one need no sizes: nothing is loaded to find them
    assert list(SameSizeBatches(range(3), 1, lambda i: 1 / 0)) == [[0], [1], [2]]


class _Unreadable(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        try:
            raise OSError("truncated PNG")
        except OSError as err:
            raise ValueError(f"cannot read image file /data/img{index}.png: {err}") from err


def test_a_loader_worker_error_is_described_by_its_file_and_reason():
    """What the leaderboard shows for a failed job: not torch's 'Caught ValueError in DataLoader
    worker process 0. Original Traceback...' wrapper, but the error inside the worker."""
    from segsweep.jobs.errors import describe_error

    with pytest.raises(ValueError) as caught:
        next(iter(torch.utils.data.DataLoader(_Unreadable(), num_workers=1)))
    assert str(caught.value).startswith("Caught ValueError in DataLoader worker process 0")
    assert describe_error(caught.value) == (
        "ValueError: cannot read image file /data/img0.png: truncated PNG (in DataLoader worker process 0)")
    with pytest.raises(ValueError) as caught:
        _Unreadable()[1]
    assert describe_error(caught.value) == "ValueError: cannot read image file /data/img1.png: truncated PNG"
    try:
        raise RuntimeError("loading failed") from OSError("disk quota exceeded")
    except RuntimeError as err:
        assert describe_error(err) == "RuntimeError: loading failed (caused by OSError: disk quota exceeded)"
