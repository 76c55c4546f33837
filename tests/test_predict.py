"""segsweep-predict on tiny checkpoints made here (a binary one trained, semantic / instance /
Mask R-CNN ones untrained): label images of any size, probabilities, overlays, tiling, TTA,
wrong inputs, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_ENCODER, compose_config, untrained_checkpoint
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from segsweep.data.synthetic import render_shapes
from segsweep.predict import PredictionError, Preprocess, predict
from segsweep.tasks import load_task
from segsweep.train import train

SMALL = ["model=unet", "+model.decoder_channels=[16,8,8,8,8]"]  # a decoder that costs little on 2 CPU cores
SIZES = {"wide": (50, 70), "odd": (97, 130)}  # (H, W): no multiple of any output stride


def composed(tmp_path_factory, name: str, *overrides: str):
    out = tmp_path_factory.mktemp(name)
    try:
        return out, compose_config(out, f"encoder={TINY_ENCODER}", *overrides)
    finally:
        GlobalHydra.instance().clear()


def untrained(tmp_path_factory, name: str, *overrides: str) -> str:
    """A checkpoint as training writes it, of a task not trained: predicting needs no good weights
    and a fit per task kind would cost seconds each."""
    out, cfg = composed(tmp_path_factory, name, *overrides)
    return untrained_checkpoint(cfg, out / "untrained.ckpt")


@pytest.fixture(scope="module")
def binary_ckpt(tmp_path_factory):
    # Trained for real (the checkpoint format segsweep-train writes). A shallow classic U-Net: its
    # receptive field (~41 px) fits in the tile overlap, so tiled == whole tests the tiling only.
    out, cfg = composed(tmp_path_factory, "binary", "model=classic_unet", "model.depth=2",
                        "model.base_width=8", "trainer.max_epochs=4", "data.splits.train.num_images=32",
                        "optimizer.lr=0.01",
                        "test=false")
    return train(cfg)["best_checkpoint"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for seed, (stem, size) in enumerate(SIZES.items()):
        Image.fromarray(render_shapes(seed, size)[0]).save(folder / f"{stem}.png")
    return folder


def run(ckpt, images, output, **options) -> dict:
    return predict({"ckpt_path": ckpt, "input": str(images), "output": str(output), **options})


def read(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_labels_probs_and_overlays_for_any_size(binary_ckpt, images, tmp_path):
    index = run(binary_ckpt, images, tmp_path, save_probs=True, overlays=True)
    assert index == json.loads((tmp_path / "predictions.json").read_text())
    assert index["class_names"] == ["background", "shape"] and not index["failed"]
    assert index["prob_channels"] == ["background", "shape"]
    for stem, size in SIZES.items():
        labels = read(tmp_path / f"{stem}.png")
        assert labels.shape == size and labels.dtype == np.uint8 and labels.max() <= 1
        probs = np.load(tmp_path / f"{stem}_probs.npy")
        assert probs.shape == (2, *size) and np.allclose(probs.sum(0), 1, atol=1e-2)
        assert np.array_equal(probs.argmax(0), labels)
        assert read(tmp_path / f"{stem}_overlay.png").shape == (*size, 3)
    entry = index["files"][0]
    assert entry["size"] == list(SIZES["odd"]) and entry["seconds"] > 0
    assert sum(entry["classes"].values()) == 97 * 130


def test_tiled_prediction_matches_whole_image(binary_ckpt, images, tmp_path):
    whole = tmp_path / "whole"
    run(binary_ckpt, images / "odd.png", whole, save_probs=True)
    # 32 px overlap > the receptive field radius: every pixel has a tile with its full context.
    run(binary_ckpt, images / "odd.png", tmp_path / "tiled", tile_size=64, tile_overlap=0.5)
    a, b = read(whole / "odd.png"), read(tmp_path / "tiled" / "odd.png")
    assert (a == b).mean() > 0.99
    assert 0 < a.mean() < 1, "one class everywhere: the comparison would say nothing"


def test_tta_with_tiles(binary_ckpt, images, tmp_path):
    index = run(binary_ckpt, images, tmp_path, tta="flips_rot90", tile_size=64)
    assert index["tta"] == "flips_rot90" and len(index["files"]) == 2
    assert read(tmp_path / "wide.png").shape == SIZES["wide"]
    with pytest.raises(ValueError, match="tta='mirror'"):
        run(binary_ckpt, images, tmp_path, tta="mirror")


def test_bad_files_are_named_and_the_rest_predicted(binary_ckpt, images, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.png").write_bytes((images / "wide.png").read_bytes())
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(folder / "grey.png")
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(PredictionError, match="2 of 3") as err:
        run(binary_ckpt, folder, tmp_path / "out")
    message = str(err.value)
    assert "grey.png has 1 channel(s) (grey) but the model takes 3 (RGB)" in message
    assert "broken.png" in message
    assert read(tmp_path / "out" / "good.png").shape == SIZES["wide"]
    index = json.loads((tmp_path / "out" / "predictions.json").read_text())
    failed = sorted(os.path.basename(f["file"]) for f in index["failed"])
    assert failed == ["broken.png", "grey.png"]
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        run(binary_ckpt, tmp_path / "missing", tmp_path / "out")


def test_cli(binary_ckpt, images, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "cli"
    done = subprocess.run(
        # Quoted: Lightning's checkpoint names hold '=', which Hydra's override grammar rejects.
        [sys.executable, "-m", "segsweep.predict", f"ckpt_path='{binary_ckpt}'", f"input={images}",
         f"output={out}", "overlays=true", "device=cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for stem, size in SIZES.items():
        assert read(out / f"{stem}.png").shape == size
        assert (out / f"{stem}_overlay.png").is_file()
    assert (out / ".hydra" / "config.yaml").is_file()  # how these predictions were made
    assert json.loads((out / "predictions.json").read_text())["device"] == "cpu"


def test_semantic_checkpoint(tmp_path_factory, images, tmp_path):
    # With x/y coordinate channels: the model takes 5 channels, the files have 3.
    ckpt = untrained(tmp_path_factory, "semantic", "task=semantic", "data.add_coords=true", *SMALL)
    index = run(ckpt, images, tmp_path, save_probs=True, tta="flips")
    classes = index["class_names"]
    assert len(classes) == 4 and index["task"] == "SemanticSegmentationTask"
    for stem, size in SIZES.items():
        labels = read(tmp_path / f"{stem}.png")
        assert labels.shape == size and labels.max() < len(classes)
        assert np.load(tmp_path / f"{stem}_probs.npy").shape == (len(classes), *size)


def test_instance_checkpoint(tmp_path_factory, images, tmp_path):
    ckpt = untrained(tmp_path_factory, "instance", "task=instance", "data.dataset.num_classes=1",
                     *SMALL)
    index = run(ckpt, images, tmp_path / "plain", save_probs=True, overlays=True)
    assert index["label_dtype"] == "uint16" and index["prob_channels"] == ["foreground", "core"]
    image = Image.open(tmp_path / "plain" / "odd.png")
    assert image.mode == "I;16" and np.asarray(image).shape == SIZES["odd"]
    entry = index["files"][0]
    assert entry["instances"] == np.asarray(image).max()
    assert np.load(tmp_path / "plain" / "odd_probs.npy").shape == (2, *SIZES["odd"])

    # The written label image is the task's own post-processing of its network's maps.
    task = load_task(ckpt).eval()
    with torch.inference_mode():
        probs = task.logits_to_probs(task(Preprocess(task)(images / "odd.png")[1]))
        own = task.postprocess(probs).instances[0]
    assert np.array_equal(own.labels, np.asarray(image))
    assert np.allclose(np.load(tmp_path / "plain" / "odd_probs.npy"), probs[0].numpy(), atol=1e-6)

    index = run(ckpt, images, tmp_path / "tta", tta="flips", tile_size=64)
    assert read(tmp_path / "tta" / "wide.png").shape == SIZES["wide"]


def test_maskrcnn_checkpoint(tmp_path_factory, images, tmp_path):
    ckpt = untrained(tmp_path_factory, "maskrcnn", "task=instance", "model=maskrcnn",
                     "encoder=resnet18", "data.dataset.num_classes=1",
                     "model.detections_per_image=5", "model.score_threshold=0.0",
                     "+model.rpn_pre_nms_top_n_test=32", "+model.rpn_post_nms_top_n_test=16")
    index = run(ckpt, images, tmp_path, overlays=True)
    image = Image.open(tmp_path / "odd.png")
    assert image.mode == "I;16" and np.asarray(image).shape == SIZES["odd"]
    assert index["files"][0]["instances"] == np.asarray(image).max() <= 5
    with pytest.raises(ValueError, match="MaskRCNNTask predicts whole images only"):
        run(ckpt, images, tmp_path, tile_size=64)
    with pytest.raises(ValueError, match="MaskRCNNTask predicts whole images only"):
        run(ckpt, images, tmp_path, tta="flips")
    with pytest.raises(ValueError, match="save_probs=true: MaskRCNNTask gives no per-pixel maps"):
        run(ckpt, images, tmp_path, save_probs=True)
