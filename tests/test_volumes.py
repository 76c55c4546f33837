"""Volumes: 3D data and its bad inputs, 3D crops, the 3D U-Net, 3D tiling, training, DDP and a
sweep mixing 2D, 2.5D and 3D jobs on one stack."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import compose_config
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from test_distributed import run

from segsweep.data import StackVolumeDataset, VolumeFolderDataset
from segsweep.data.sampling import SampleKey
from segsweep.inference import Predictor, sliding_window_probs, tile_starts
from segsweep.models import ClassicUNet3D
from segsweep.train import build_datamodule, build_task, train

# A tiny 3D run: 16 x 32 x 32 volumes, a 4-wide 2-level U-Net.
TINY_3D = ["experiment=synthetic3d", "data.dataset.image_size=32", "data.dataset.depth=16",
           "data.splits.train.num_images=4", "data.splits.val.num_images=2", "data.splits.test.num_images=2",
           "augment.crop_size=32", "augment.crop_depth=16", "model.base_width=4", "model.depth=2",
           "data.batch_size=2", "optimizer.lr=0.01"]
ISBI_VALUES = {0: 1, 255: 0}  # the ISBI masks: dark (0) is membrane = class 1


def write_volume_folder(root: Path, volumes: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """``images/`` and ``masks/`` of volumes: ``.npy`` for names ending in ``npy``, else ``.tif``."""
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name, (image, mask) in volumes.items():
        for folder, array in (("images", image), ("masks", mask)):
            if name.endswith("npy"):
                np.save(root / folder / f"{name}.npy", array)
            else:
                tifffile.imwrite(root / folder / f"{name}.tif", array)


def volume_dataset(root: Path, **kwargs) -> VolumeFolderDataset:
    return VolumeFolderDataset(root, "images", "masks", ["cell", "membrane"], value_map=ISBI_VALUES, **kwargs)


def test_volume_folder_reads_npy_and_multipage_tif(tmp_path, make_cfg):
    rng = np.random.default_rng(0)
    raw = {name: (rng.integers(0, 256, (4, 12, 10), dtype=np.uint8),
                  rng.choice(np.array([0, 255], np.uint8), (4, 12, 10))) for name in ("a_npy", "b_tif")}
    write_volume_folder(tmp_path, raw)
    cfg = make_cfg("data=volume_folder", f"data.root={tmp_path}", "data.dataset.value_map={0: 1, 255: 0}",
                   "data.dataset.spacing=[50,4,4]", "data.dataset.val_fraction=0", fast=False)
    dataset = build_datamodule(cfg).build("val", transform=None)  # val_fraction 0: every volume
    assert len(dataset) == 2 and dataset.spacing == (50.0, 4.0, 4.0)
    for i, name in enumerate(sorted(raw)):
        item = dataset[i]
        image, mask = raw[name]
        assert item["image"].shape == (1, 4, 12, 10) and item["image"].dtype == torch.float32
        assert item["mask"].dtype == torch.int64
        assert np.array_equal(item["image"][0].numpy(), image.astype(np.float32))
        assert np.array_equal(item["mask"].numpy(), (mask == 0).astype(np.int64))  # value_map 0 -> 1


def test_volume_bad_inputs_name_the_file(tmp_path):
    image = np.zeros((4, 8, 8), np.uint8)
    write_volume_folder(tmp_path / "shape", {"v": (image, np.zeros((4, 8, 9), np.uint8))})
    with pytest.raises(ValueError, match=r"label volume .*v\.tif has shape \(4, 8, 9\) but volume"):
        volume_dataset(tmp_path / "shape")[0]
    write_volume_folder(tmp_path / "labels", {"v": (image, np.full((4, 8, 8), 7, np.uint8))})
    with pytest.raises(ValueError, match=r"mask .*labels/masks/v\.tif has values \[7\]"):
        volume_dataset(tmp_path / "labels")[0]
    write_volume_folder(tmp_path / "broken", {"v": (image, np.zeros((4, 8, 8), np.uint8))})
    (tmp_path / "broken" / "images" / "v.tif").write_bytes(b"not a tiff")
    with pytest.raises(ValueError, match=r"cannot read volume file .*broken/images/v\.tif"):
        volume_dataset(tmp_path / "broken")[0]
    write_volume_folder(tmp_path / "flat", {"v_npy": (np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))})
    with pytest.raises(ValueError, match=r"volume .*v_npy\.npy has shape \(8, 8\)"):
        volume_dataset(tmp_path / "flat")[0]


def write_isbi_stack(root: Path, slices: int = 8, size: int = 32, seed: int = 0) -> None:
    """An ISBI 2012 layout: images/ and masks/ of one PNG per slice, membrane = 0 in the masks;
    membranes are dark lines, so a model can learn them."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for z in range(slices):
        membrane = np.zeros((size, size), bool)
        for _ in range(3):
            membrane[rng.integers(size), :] = True
            membrane[:, rng.integers(size)] = True
        image = np.where(membrane, 60, 190) + rng.normal(0, 20, (size, size))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / f"{z:02d}.png")
        Image.fromarray(np.where(membrane, 0, 255).astype(np.uint8)).save(root / "masks" / f"{z:02d}.png")


def test_stack_volume_holds_out_the_slices_the_2d_split_holds_out(tmp_path, make_cfg):
    write_isbi_stack(tmp_path / "isbi")
    root = f"data.root={tmp_path / 'isbi'}"
    flat = build_datamodule(make_cfg("experiment=isbi2012", root, fast=False)).build("val")
    volume = build_datamodule(make_cfg("experiment=isbi2012_3d", root, fast=False))
    val_stems = {image.stem for image, _ in flat.pairs}
    assert len(val_stems) == 2  # 0.25 of 8 slices
    for split, labelled in (("val", val_stems), ("train", {f"{z:02d}" for z in range(8)} - val_stems)):
        item = volume.build(split, transform=None)[0]
        assert item["image"].shape == (1, 8, 32, 32)
        for z in range(8):
            mask = np.asarray(Image.open(tmp_path / "isbi" / "masks" / f"{z:02d}.png"))
            expected = (mask == 0).astype(np.int64) if f"{z:02d}" in labelled else np.full(mask.shape, 255)
            assert np.array_equal(item["mask"][z].numpy(), expected), (split, z)


def test_stack_of_slices_of_different_sizes_is_refused(tmp_path):
    write_isbi_stack(tmp_path)
    Image.new("L", (30, 32)).save(tmp_path / "images" / "03.png")
    Image.new("L", (30, 32), 255).save(tmp_path / "masks" / "03.png")
    with pytest.raises(ValueError, match=r"slices of .*images differ in size"):
        StackVolumeDataset(tmp_path, "images", "masks", ["cell", "membrane"], value_map=ISBI_VALUES)[0]


def test_3d_crops_and_flips_keep_image_and_labels_aligned(tmp_path, make_cfg):
    """Each voxel's label is a function of its intensity (40 * label): after the volume pipeline
    (crop, flips, rotations, gamma, normalisation: one monotonic intensity map for all voxels) every
    label must still have one intensity, increasing with the label, however the crop moved."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, (12, 40, 40)).astype(np.uint8)
    write_volume_folder(tmp_path / "v", {"v_npy": (labels * 40, labels)})
    cfg = make_cfg("augment=volume", "augment.crop_size=16", "augment.crop_depth=8")
    dataset = VolumeFolderDataset(tmp_path / "v", "images", "masks", [str(c) for c in range(6)], samples_per_volume=4,
                                  transform=instantiate(cfg.augment.train, _convert_="all"))
    crops = []
    for seed in range(6):
        item = dataset[SampleKey(seed % 4, seed)]
        image, mask = item["image"][0].numpy(), item["mask"].numpy()
        assert image.shape == mask.shape == (8, 16, 16)
        levels = [image[mask == c] for c in np.unique(mask)]
        assert all(np.ptp(level) < 1e-4 for level in levels)
        assert all(a[0] < b[0] for a, b in zip(levels, levels[1:], strict=False))
        assert torch.equal(dataset[SampleKey(seed % 4, seed)]["mask"], item["mask"])  # the seed fixes it
        crops.append(mask)
    assert len({crop.tobytes() for crop in crops}) == 6  # the crops differ between seeds


@pytest.mark.parametrize("size", [(5, 13, 21), (16, 32, 32), (1, 3, 7)])
def test_unet3d_takes_any_volume_size(make_cfg, size):
    cfg = make_cfg(*TINY_3D, "model.depth=3", "model.pool_z_levels=1")
    task = build_task(cfg, build_datamodule(cfg)).eval()
    assert task.net.output_stride == (2, 8, 8)
    volume = torch.randn(2, 1, *size)
    with torch.no_grad():
        logits = task(volume)
        # The definition: zero-pad the end of each axis to the stride (and at least one stride), crop.
        padded = [max(-(-n // s) * s, s) for n, s in zip(size, (2, 8, 8), strict=True)]
        by_hand = torch.zeros(2, 1, *padded)
        by_hand[:, :, : size[0], : size[1], : size[2]] = volume
        expected = task.net(by_hand)[:, :, : size[0], : size[1], : size[2]]
    assert logits.shape == (2, 1, *size)
    torch.testing.assert_close(logits, expected)


def test_semantic_3d_blobs_train_through_the_semantic_task(make_cfg):
    """task=semantic on volumes: one class per blob brightness, multiclass loss and metrics on
    (N, K, D, H, W) logits."""
    cfg = make_cfg(*TINY_3D, "task=semantic")
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule)
    assert task.class_names == ["background", "blob1", "blob2"]
    batch = datamodule.build("train")[SampleKey(0, 0)]
    images, masks = batch["image"][None], batch["mask"][None]
    assert set(masks.unique().tolist()) <= {0, 1, 2} and images.shape == (1, 1, 16, 32, 32)
    logits = task(images)
    loss = task.criterion(logits, masks)
    loss.backward()
    assert logits.shape == (1, 3, 16, 32, 32) and torch.isfinite(loss)
    task.metrics["val"].update(logits.argmax(1), masks)
    assert 0 <= task.metrics["val"].compute()["val/iou"] <= 1


def test_unet3d_pools_z_only_in_its_first_levels():
    net = ClassicUNet3D(1, 2, depth=3, base_width=2, pool_z_levels=1, downsample="conv", upsample="trilinear")
    assert net(torch.randn(1, 1, 2, 16, 16)).shape == (1, 2, 2, 16, 16)  # two slices survive 3 levels
    assert ClassicUNet3D(1, 2, depth=2).output_stride == (4, 4, 4)
    with pytest.raises(ValueError, match="pool_z_levels=3 must be in 0..depth=2"):
        ClassicUNet3D(1, 2, depth=2, pool_z_levels=3)


RADIUS = 2  # of the two 3x3x3 convolutions below


def clean_axis(length: int, tile: int, step: int) -> np.ndarray:
    """Voxels of one axis that no covering tile sees within RADIUS of an inner tile border."""
    clean = np.ones(length, bool)
    for start in tile_starts(length, tile, step):
        if start > 0:
            clean[start : start + RADIUS] = False
        if start + tile < length:
            clean[start + tile - RADIUS : start + tile] = False
    return clean


def test_3d_sliding_window_equals_whole_volume_away_from_seams():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 3, padding=1))

    def predict(x):
        return net(x).softmax(1)

    volume = torch.randn(1, 14, 30, 27)
    tile, overlap = (8, 16, 16), 0.5
    with torch.no_grad():
        whole = predict(volume[None])[0]
    tiled = sliding_window_probs(predict, volume, tile, overlap, batch_size=3)
    # The predictor's path, tile sides from config as a list.
    torch.testing.assert_close(Predictor(tile_size=list(tile), tile_overlap=overlap, tile_batch_size=3)
                               .maps(predict, volume[None])[0], tiled)
    clean = torch.ones(volume.shape[1:], dtype=torch.bool)
    for axis, (length, side) in enumerate(zip(volume.shape[1:], tile, strict=True)):
        shape = [1, 1, 1]
        shape[axis] = length
        clean &= torch.from_numpy(clean_axis(length, side, int(side * (1 - overlap)))).reshape(shape)
    assert clean.float().mean() > 0.3
    error = (tiled - whole).abs().amax(dim=0)
    assert error[clean].max() < 1e-5
    assert error[~clean].max() > 1e-4  # the seams are there, so the clean region is the test


def test_predict_writes_a_label_volume_per_volume_file(tmp_path, make_cfg):
    """segsweep-predict on a 3D checkpoint: .npy and multi-page .tif volumes in, one multi-page
    label TIFF out each, equal to the task's own tiled prediction of the normalised volume."""
    from conftest import untrained_checkpoint

    from segsweep.predict import predict

    cfg = make_cfg(*TINY_3D)
    ckpt = untrained_checkpoint(cfg, tmp_path / "untrained.ckpt")
    rng = np.random.default_rng(2)
    volumes = {"a": rng.integers(0, 256, (6, 20, 18), dtype=np.uint8),
               "b": rng.integers(0, 256, (5, 16, 16), dtype=np.uint8)}
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "a.npy", volumes["a"])
    tifffile.imwrite(tmp_path / "in" / "b.tif", volumes["b"])
    index = predict({"ckpt_path": ckpt, "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
                     "tile_size": [4, 16, 16], "device": "cpu"})
    assert [entry["labels"] for entry in index["files"]] == ["a.tif", "b.tif"]
    assert list(index["tile_size"]) == [4, 16, 16]
    from segsweep.tasks import load_task

    task = load_task(ckpt, predictor=Predictor(tile_size=(4, 16, 16))).eval()
    for name, volume in volumes.items():
        labels = tifffile.imread(tmp_path / "out" / f"{name}.tif")
        normalised = (volume.astype(np.float32) / 255 - 0.5) / 0.25  # augment=volume's Normalize
        with torch.no_grad():
            expected = task.predict(torch.from_numpy(normalised)[None, None]).labels[0].numpy()
        assert labels.shape == volume.shape and np.array_equal(labels, expected)


def test_training_on_synthetic_3d_learns(tmp_path):
    cfg = compose_config(tmp_path, *TINY_3D, "trainer.max_epochs=4")
    result = train(cfg)
    val = build_datamodule(cfg).build("val")
    foreground = torch.cat([val[i]["mask"].flatten() for i in range(len(val))]).float().mean().item()
    chance = 2 * foreground / (1 + foreground)  # Dice of calling every voxel a blob
    assert result["best"]["val/dice"] > chance + 0.3, (result["best"]["val/dice"], chance)
    assert result["final"]["test/dice"] > chance + 0.3
    saved = json.loads((tmp_path / "metrics.json").read_text())
    # A step's growth can be 0 on CPU: the allocator reuses pages this process already holds.
    assert saved["peak_memory_mb"] > saved["peak_step_growth_mb"] >= 0


@pytest.mark.slow  # two ranks: 45 s on 2 idle cores, 100 s loaded; beyond the default run's budget
def test_3d_under_ddp_cpu_equals_one_process(tmp_path, make_cfg):
    """Two ranks evaluate one test volume each; a single process evaluating the same checkpoint
    gets the same Dice and IoU (volumes are never padded or counted twice)."""
    from segsweep.eval import evaluate

    # Default callbacks: the checkpoint to compare with, and the image logger on volumes.
    run("segsweep.train", "trainer=ddp_cpu", *TINY_3D, "trainer.max_epochs=1", "logger=none",
        "callbacks.image_logger.every_n_epochs=1", f"hydra.run.dir={tmp_path / 'ddp'}", cwd=tmp_path)
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["status"] == "completed"
    assert (tmp_path / "ddp" / "predictions" / "epoch_000.png").is_file()  # middle slices drawn
    single = evaluate(make_cfg("trainer=cpu", f"ckpt_path={ddp['best_checkpoint']}", "split=test",
                               config_name="eval", fast=False))
    for name in ("test/iou", "test/dice", "test/acc"):
        assert single["final"][name] == pytest.approx(ddp["final"][name], abs=1e-6), name


def test_one_sweep_ranks_2d_25d_and_3d_jobs_on_one_stack(tmp_path):
    write_isbi_stack(tmp_path / "isbi", slices=8, size=32)
    sweep = tmp_path / "sweep"
    run("segsweep.train", "-m", "sweep=isbi_2d_25d_3d", f"data.root={tmp_path / 'isbi'}", "trainer=cpu",
        "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "test=false", "logger=none",
        "augment.crop_size=32", "model.base_width=4", "model.depth=2", "data.batch_size=2", "data.num_workers=0",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    rows = list(csv.DictReader((sweep / "leaderboard.csv").open()))
    assert sorted(row["experiment"] for row in rows) == ["isbi2012", "isbi2012_25d", "isbi2012_3d"]
    assert all(row["status"] == "completed" and 0 <= float(row["best val/iou"]) <= 1 for row in rows)
    assert sorted(int(row["rank"]) for row in rows) == [1, 2, 3]  # one ranking over the three
    for job in sweep.glob("*_classic_unet*"):
        assert json.loads((job / "metrics.json").read_text())["peak_memory_mb"] > 0
        config = OmegaConf.load(job / ".hydra" / "config.yaml")
        assert config.trainer.max_time == "00:00:10:00"  # one budget, the schedule decayed over it
        assert config.scheduler._target_ == "segsweep.schedules.BudgetCosineLR"
