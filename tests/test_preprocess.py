"""The network's input is made in one place (segsweep.data.preprocess), fast, and to the bit as before.

- Samples are bit-identical to the previous pipeline's (the code of commit 592b1ab, restated in
  ``previous_item`` below) for the same keys, with every shipped ``augment`` pipeline: the fast
  path (channel-first Normalize, compact masks, no full-size copies) changes no value and no
  random draw.
- predict's network input for a file equals the dataset's evaluation input for that image: a
  plain folder, a 2.5D + coordinates folder and ``TiledInstances`` (percentile scaling).
"""

from __future__ import annotations

from types import SimpleNamespace

import albumentations as A
import numpy as np
import pytest
import tifffile
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from segsweep.data import FolderDataset, SyntheticBlobs3D, SyntheticShapes
from segsweep.data.base import seed_augmentations
from segsweep.data.datamodule import pad_collate
from segsweep.data.fast_transforms import ElasticTransform, PlanarNormalize, SquareSymmetry, speed_up
from segsweep.data.folder import _read_png, read_image
from segsweep.data.instances import TiledInstances
from segsweep.data.preprocess import Preprocess, finish_batch
from segsweep.data.sampling import EpochSampler
from segsweep.predict import Preprocess as PredictPreprocess
from segsweep.train import build_datamodule


def previous_coordinate_maps(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.meshgrid(np.linspace(-1, 1, height, dtype=np.float32),
                         np.linspace(-1, 1, width, dtype=np.float32), indexing="ij")
    return xs, ys


def previous_item(dataset, transform, key) -> dict:
    """``SegmentationDataset.__getitem__`` as it was (commit 592b1ab), with its own copy of the
    pipeline (plain ``albumentations.Normalize``) and int64 masks, as the loads made them."""
    index, seed = key if isinstance(key, tuple) else (key, None)
    if seed is not None:
        seed_augmentations(transform, seed)
    sample = dataset.load(index)
    image, masks = sample.image, [sample.mask.astype(np.int64)]
    if sample.instances is not None:
        masks.append(sample.instances.astype(np.int64))
    if dataset.add_coords:
        masks.extend(previous_coordinate_maps(*image.shape[:2]))
    out = transform(image=image, masks=masks)
    image, masks = out["image"], out["masks"]
    if image.ndim == 2:
        image = image[..., None]
    if dataset.add_coords:
        image = np.concatenate([image, np.stack(masks[-2:], axis=-1)], axis=-1)
    item = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), np.float32)),
            "mask": torch.from_numpy(np.asarray(masks[0], dtype=np.int64).copy())}
    if sample.instances is not None:
        item["instances"] = torch.from_numpy(np.asarray(masks[1], dtype=np.int64).copy())
    return item


def previous_volume_item(dataset, transform, key) -> dict:
    index, seed = key
    seed_augmentations(transform, seed)
    sample = dataset.load(index)
    out = transform(volume=sample.image, mask3d=sample.mask.astype(np.int64))
    return {"image": torch.from_numpy(np.ascontiguousarray(out["volume"].transpose(3, 0, 1, 2), np.float32)),
            "mask": torch.from_numpy(np.asarray(out["mask3d"], dtype=np.int64).copy())}


def assert_same(new: dict, old: dict, what: str) -> None:
    assert set(new) - {"name"} == set(old) - {"name"}, what
    for name, tensor in old.items():
        if not isinstance(tensor, torch.Tensor):
            assert new[name] == tensor, (what, name)
            continue
        assert new[name].dtype == tensor.dtype and new[name].shape == tensor.shape, (what, name)
        assert torch.equal(new[name], tensor), f"{what}: {name} differs"


def pipelines(make_cfg, augment: str, *overrides: str):
    """Two copies of one shipped pipeline: the dataset's, and the reference's (plain Normalize)."""
    cfg = make_cfg(f"augment={augment}", *overrides)
    return instantiate(cfg.augment.train, _convert_="all"), instantiate(cfg.augment.train, _convert_="all")


def write_stack(root, count: int, size=(40, 48), channels: int = 1, mask_values=(0, 255)) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(7)
    for i in range(count):
        shape = (*size, channels) if channels > 1 else size
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / "images" / f"{i:02d}.png")
        Image.fromarray(rng.choice(np.array(mask_values, np.uint8), size)).save(root / "masks" / f"{i:02d}.png")


@pytest.mark.parametrize(("target", "add_coords"), [("binary", False), ("semantic", True), ("instance", False),
                                                    ("instance", True)])
def test_default_pipeline_gives_the_previous_samples(make_cfg, target, add_coords):
    new, old = pipelines(make_cfg, "default", "augment.crop_size=40")
    dataset = SyntheticShapes(12, image_size=56, target=target, seed=3, transform=new)
    dataset.add_coords = add_coords
    for key in list(EpochSampler(len(dataset), seed=1, current_epoch=lambda: 2)):
        assert_same(dataset[key], previous_item(dataset, old, key), f"{target} {key}")
    # The dataset's pipeline runs the fast equivalents; the reference, albumentations' own.
    assert [type(t) for t in new.transforms[1::2]] == [SquareSymmetry, PlanarNormalize]
    assert [type(t) for t in old.transforms[1::2]] == [A.SquareSymmetry, A.Normalize]


def test_integer_keys_draw_the_same_stream(make_cfg):
    """Keys without a seed go on with the pipeline's own stream: the same draws, one after another."""
    new, old = pipelines(make_cfg, "default", "augment.crop_size=32")
    dataset = SyntheticShapes(6, image_size=48, seed=4, transform=new)
    seed_augmentations(old, old.seed)
    for index in [0, 3, 3, 5, 1]:
        assert_same(dataset[index], previous_item(dataset, old, index), f"index {index}")


@pytest.mark.parametrize(("augment", "channels", "add_coords"), [("em", 1, False), ("em", 1, True),
                                                                 ("street", 3, False)])
def test_folder_pipelines_give_the_previous_samples(make_cfg, tmp_path, augment, channels, add_coords):
    """ISBI-like grey slices with the elastic pipeline; CamVid-like RGB with horizontal flips."""
    write_stack(tmp_path, 6, channels=channels, mask_values=(0, 3, 255))
    new, old = pipelines(make_cfg, augment, "augment.crop_size=32")
    dataset = FolderDataset(tmp_path, "images", "masks", ["a", "b", "c", "d"], in_channels=channels,
                            value_map={0: 0, 3: 3, 255: 1}, transform=new)
    dataset.add_coords = add_coords
    if augment == "em":  # elastic on every sample (its p is 0.3), so each draw is compared
        new.transforms[2].p = old.transforms[2].p = 1.0
    keys = [(key.index, key.augment_seed + r) for r in range(3)
            for key in EpochSampler(len(dataset), seed=0, current_epoch=lambda: 0)]
    for key in keys:
        assert_same(dataset[key], previous_item(dataset, old, key), f"{augment} {key}")
    if augment == "em":
        assert type(new.transforms[2]) is ElasticTransform and type(old.transforms[2]) is A.ElasticTransform


def test_volume_pipeline_gives_the_previous_samples(make_cfg):
    new, old = pipelines(make_cfg, "volume", "augment.crop_size=24", "augment.crop_depth=8")
    dataset = SyntheticBlobs3D(2, image_size=32, depth=12, target="semantic", samples_per_volume=3,
                               transform=new)
    for key in EpochSampler(len(dataset), seed=2, current_epoch=lambda: 1):
        new_item = dataset[key]
        assert_same(new_item, previous_volume_item(dataset, old, key), f"volume {key}")
        assert new_item["image"].is_contiguous() and new_item["mask"].dtype == torch.int64


@pytest.mark.parametrize("channels", [1, 3, 4, 6])
def test_planar_normalize_equals_normalize(channels):
    rng = np.random.default_rng(channels)
    mean, std = list(rng.uniform(0.2, 0.6, channels)), list(rng.uniform(0.1, 0.3, channels))
    plain, planar = A.Normalize(mean=mean, std=std), A.Compose([A.Normalize(mean=mean, std=std)])
    speed_up(planar)
    assert type(planar.transforms[0]) is PlanarNormalize
    image = rng.integers(0, 256, (37, 53, channels), dtype=np.uint8)
    for view in (image, np.rot90(image), image[::2, 3:]):  # any strides, as crops and flips leave them
        out = planar(image=view)["image"]
        assert out.dtype == np.float32 and out.transpose(2, 0, 1).flags.c_contiguous
        np.testing.assert_array_equal(out, plain(image=view)["image"])
    volume = rng.integers(0, 256, (5, 17, 19, channels), dtype=np.uint8)
    np.testing.assert_array_equal(planar(volume=volume)["volume"], plain(volume=volume)["volume"])
    floats = image.astype(np.float32) * 0.7  # not uint8: Normalize's own path
    np.testing.assert_array_equal(planar(image=floats)["image"], plain(image=floats)["image"])


@pytest.mark.parametrize(("shape", "dtype"), [((9, 13), np.uint8), ((9, 13, 1), np.uint8), ((9, 13, 3), np.uint8),
                                            ((9, 13, 4), np.float32), ((9, 13), np.int32), ((9, 13, 5), np.uint8),
                                            ((9, 13), np.int64)])
def test_square_symmetry_through_opencv_equals_albumentations(shape, dtype):
    """Each of the 8 elements, on images and masks of the types pipelines carry (5 channels and
    int64: albumentations' own path)."""
    data = np.random.default_rng(0).integers(0, 200, shape).astype(dtype)
    plain, fast = A.SquareSymmetry(p=1), A.SquareSymmetry(p=1)
    speed_up(A.Compose([fast]))
    assert type(fast) is SquareSymmetry and fast._key2func["image"].__func__ is SquareSymmetry.apply
    for element in ("e", "r90", "r180", "r270", "v", "hvt", "h", "t"):
        expected = plain.apply(data, group_element=element)
        got = fast.apply(data, group_element=element)
        assert got.shape == expected.shape and got.dtype == expected.dtype, element
        np.testing.assert_array_equal(got, expected, err_msg=element)
    volume = np.random.default_rng(1).integers(0, 200, (4, *shape)).astype(dtype)
    for seed in range(8):
        outs = []
        for transform in (plain, fast):
            transform.set_random_seed(seed)
            outs.append(transform(volume=volume, mask3d=volume[..., 0] if volume.ndim == 4 else volume))
        for key in ("volume", "mask3d"):
            np.testing.assert_array_equal(outs[0][key], outs[1][key], err_msg=f"{key} seed {seed}")


@pytest.mark.parametrize("options", [{}, {"same_dxdy": True}, {"noise_distribution": "uniform"},
                                     {"approximate": True}])
def test_elastic_maps_in_float32_equal_albumentations(options):
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 1), dtype=np.uint8)
    masks = [np.random.default_rng(1).integers(0, 3, (70, 90), dtype=np.uint8)]
    plain, fast = A.ElasticTransform(alpha=30, sigma=6, p=1, **options), A.ElasticTransform(alpha=30, sigma=6, p=1,
                                                                                          **options)
    speed_up(A.Compose([fast]))
    assert type(fast) is ElasticTransform
    for seed in range(5):
        plain.set_random_seed(seed)
        fast.set_random_seed(seed)
        a, b = plain(image=image, masks=masks), fast(image=image, masks=masks)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["masks"][0], b["masks"][0])


@pytest.mark.parametrize("mode", ["L", "I;16", "RGB", "RGBA", "P", "LA", "1", "L+transparency"])
def test_png_reading_gives_pils_array(tmp_path, mode):
    """OpenCV decodes the PNGs it reads as PIL does (grey, 16-bit grey, RGB, RGBA); PIL reads the others."""
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (11, 17), dtype=np.uint8)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (11, 17), dtype=np.uint16))
    elif mode in ("RGB", "RGBA"):
        image = Image.fromarray(rng.integers(0, 256, (11, 17, len(mode)), dtype=np.uint8), mode)
    elif mode == "L+transparency":
        image = Image.fromarray(grey)
        image.info["transparency"] = 7
    else:
        image = Image.fromarray(grey).convert(mode)
    path = tmp_path / "x.png"
    image.save(path, **({"transparency": 7} if mode == "L+transparency" else {}))
    expected = np.asarray(Image.open(path))
    assert (_read_png(path) is not None) == (mode in ("L", "I;16", "RGB", "RGBA", "L+transparency"))  # OpenCV
    got = read_image(path)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_collate_in_one_copy_pads_and_keeps_values():
    items = [{"image": torch.rand(2, 5, 6), "mask": torch.randint(0, 3, (5, 6)), "name": "a"},
             {"image": torch.rand(2, 3, 6), "mask": torch.randint(0, 3, (3, 6)), "name": "b"}]
    batch = pad_collate(items, ignore_index=255)
    assert torch.equal(batch["image"][0], items[0]["image"])
    assert torch.equal(batch["image"][1, :, :3], items[1]["image"])
    assert (batch["image"][1, :, 3:] == 0).all() and (batch["mask"][1, 3:] == 255).all()
    same = pad_collate([items[0], items[0]], ignore_index=255)
    assert torch.equal(same["image"], torch.stack([items[0]["image"]] * 2))


# predict's input for a file == the dataset's evaluation input for that image.

REAL = ["trainer=cpu", "logger=none", "callbacks=none"]  # conftest's FAST list is for synthetic data

def predict_input(cfg, path, in_channels: int) -> torch.Tensor:
    """What segsweep-predict feeds the network for ``path``, from a checkpoint of ``cfg``: its
    Preprocess reads only the run config and the model's input channels off the task."""
    run_config = OmegaConf.to_container(cfg, resolve=True)
    task = SimpleNamespace(hparams=SimpleNamespace(run_config=run_config, in_channels=in_channels))
    return PredictPreprocess(task)(path)[1][0]


def eval_inputs(cfg) -> tuple[object, dict[str, torch.Tensor]]:
    datamodule = build_datamodule(cfg)
    dataset = datamodule.build("val")
    return datamodule, {item["name"]: item["image"] for item in (dataset[i] for i in range(len(dataset)))}


@pytest.mark.parametrize("options", [[], ["data.context_slices=1", "data.add_coords=true"],
                                     ["data.context_slices=2"]])
def test_predict_input_is_the_folder_datasets_eval_input(make_cfg, tmp_path, options):
    write_stack(tmp_path, 5)
    cfg = make_cfg("data=isbi2012", f"data.root={tmp_path}", "augment=em", *REAL, *options, fast=False)
    datamodule, inputs = eval_inputs(cfg)
    assert inputs
    for stem, tensor in inputs.items():
        given = predict_input(cfg, tmp_path / "images" / f"{stem}.png", datamodule.in_channels)
        assert given.shape == tensor.shape and torch.equal(given, tensor), stem


def test_predict_input_is_the_tiled_datasets_eval_input(make_cfg, tmp_path):
    """16-bit image: the percentiles are the whole image's, in training (a tile of it) and predict."""
    rng = np.random.default_rng(0)
    image = (rng.gamma(2.0, 900.0, (64, 80)) + 300).astype(np.uint16)
    labels = np.zeros((64, 80), np.uint16)
    labels[40:50, 50:70] = 4
    tifffile.imwrite(tmp_path / "img2d.tif", image)
    tifffile.imwrite(tmp_path / "mask2d.tif", labels)
    cfg = make_cfg("task=instance", "data=dsb2018_sample", f"data.root={tmp_path}", "augment=em", *REAL, fast=False)
    datamodule, inputs = eval_inputs(cfg)
    whole = predict_input(cfg, tmp_path / "img2d.tif", datamodule.in_channels)
    assert torch.equal(whole[:, 32:, 40:], inputs["tile3"])  # the validation tile: 3 of the 2x2 grid
    scaled = TiledInstances.scale_intensities(image[..., None])
    assert scaled.min() == 0 and scaled.max() == 255


def test_preprocess_from_config_needs_no_data(make_cfg, tmp_path):
    """Built from the configs alone: the data root may not exist where predict runs."""
    cfg = make_cfg("task=instance", "data=dsb2018_sample", f"data.root={tmp_path / 'gone'}", "augment=em",
                   "+data.add_coords=true", *REAL, fast=False)
    config = OmegaConf.to_container(cfg, resolve=True)
    preprocess = Preprocess.from_config(config["data"], config["augment"]["eval"])
    assert preprocess.scale is TiledInstances.scale_intensities and preprocess.add_coords
    inputs, _ = preprocess(preprocess.scale(np.full((8, 10, 1), 7, np.uint16)))
    assert inputs.shape == (3, 8, 10) and inputs.dtype == np.float32
    assert Preprocess.from_config({"dataset": {"_target_": "segsweep.data.SyntheticBlobs3D"}}, None).volumetric


def test_masks_keep_their_values_in_compact_types(tmp_path):
    """Folder masks are mapped through a table (8 and 16 bit) into uint8 when the ids fit."""
    write_stack(tmp_path, 1, mask_values=(0, 3, 255))
    dataset = FolderDataset(tmp_path, "images", "masks", ["a", "b", "c"], in_channels=1, value_map={0: 0, 3: 2},
                            void_values=[255])
    raw = np.asarray(Image.open(tmp_path / "masks" / "00.png"))
    mask = dataset.load(0).mask
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, np.select([raw == 0, raw == 3], [0, 2], 255))
    wide = np.array([[0, 3], [255, 3]], np.uint16)
    np.testing.assert_array_equal(dataset.map_values(wide, "m.tif"), [[0, 2], [255, 2]])
    signed = wide.astype(np.int32)  # any other type: value by value, the same ids
    np.testing.assert_array_equal(dataset.map_values(signed, "m.tif"), [[0, 2], [255, 2]])
    with pytest.raises(ValueError, match=r"values \[7\] not in data.value_map"):
        dataset.map_values(np.array([[0, 7]], np.uint8), "m.png")


# Compact batches (GPU runs): uint8 images and masks to the device, finished there to the bit.

def finished(batch: dict) -> dict:
    return finish_batch({key: value for key, value in batch.items()})


@pytest.mark.parametrize("kind", ["binary", "instance", "em", "volume"])
def test_compact_batches_finish_to_the_same_batches(make_cfg, tmp_path, kind):
    if kind == "volume":
        cfg = make_cfg("augment=volume", "augment.crop_size=24", "augment.crop_depth=8")
        dataset = SyntheticBlobs3D(2, image_size=32, depth=12, samples_per_volume=4,
                                   transform=instantiate(cfg.augment.train, _convert_="all"))
    elif kind == "em":
        write_stack(tmp_path, 6)
        cfg = make_cfg("augment=em", "augment.crop_size=32")
        dataset = FolderDataset(tmp_path, "images", "masks", ["a", "b"], in_channels=1, value_map={0: 0, 255: 1},
                                transform=instantiate(cfg.augment.train, _convert_="all"))
    else:
        cfg = make_cfg("augment.crop_size=40")
        dataset = SyntheticShapes(8, image_size=56, target=kind, transform=instantiate(cfg.augment.train,
                                                                                          _convert_="all"))
    keys = list(EpochSampler(len(dataset), seed=0, current_epoch=lambda: 1))[:4]
    plain = pad_collate([dataset[key] for key in keys], ignore_index=255)
    dataset.compact_batches = True
    items = [dataset[key] for key in keys]
    # (instances are int32, and albumentations stacks the masks moved together in one type)
    assert items[0]["image"].dtype == torch.uint8 and items[0]["mask"].dtype in (torch.uint8, torch.int32)
    compact = pad_collate(items, ignore_index=255)
    assert compact["image"].dtype == torch.uint8 and "image_table" in compact
    assert_same(finished(compact), plain, kind)
    assert plain["image"].dtype == torch.float32 and finished(plain)["mask"].dtype == torch.int64


def test_compact_items_of_different_sizes_are_padded_decoded(tmp_path):
    write_stack(tmp_path / "a", 1, size=(20, 24))
    write_stack(tmp_path / "b", 1, size=(16, 30))
    datasets = [FolderDataset(tmp_path / d, "images", "masks", ["a", "b"], in_channels=1, value_map={0: 0, 255: 1},
                              transform=A.Compose([A.Normalize(mean=[0.5], std=[0.25])])) for d in "ab"]
    plain = pad_collate([d[0] for d in datasets], ignore_index=255)
    for dataset in datasets:
        dataset.compact_batches = True
    compact = pad_collate([d[0] for d in datasets], ignore_index=255)
    assert "image_table" not in compact and compact["image"].dtype == torch.float32  # decoded before padding
    assert_same(finished(compact), plain, "mixed sizes")


def test_training_with_compact_batches_is_the_same_run(make_cfg, tmp_path):
    """Through Lightning (the datamodule's on_after_batch_transfer): the same metrics, to the bit."""
    from segsweep.train import train

    results = [train(make_cfg("test=false", f"+data.compact_batches={flag}", f"paths.output_dir={tmp_path / flag}"))
               for flag in ("false", "true")]
    assert results[0]["final"] == results[1]["final"] and results[0]["final"]["val/iou"] > 0
