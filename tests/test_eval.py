"""segsweep-eval: the predictor options reach every task that can use them, Mask R-CNN refuses
them, the run's own monitored metric is returned, and a new labelled folder is evaluated whole."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import compose_config, untrained_checkpoint
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from segsweep.data.synthetic import render_shapes
from segsweep.eval import evaluate
from segsweep.inference import Predictor
from segsweep.predict import Preprocess
from segsweep.tasks import load_task

SMALL = ["model=classic_unet", "model.depth=2", "model.base_width=8"]


def untrained(folder, *overrides: str, fast: bool = True) -> str:
    try:
        cfg = compose_config(folder, *overrides, fast=fast)
    finally:
        GlobalHydra.instance().clear()
    return untrained_checkpoint(cfg, folder / "untrained.ckpt")


def eval_config(folder, ckpt: str, *overrides: str):
    try:
        return compose_config(folder, "trainer=cpu", f"ckpt_path='{ckpt}'", "+trainer.enable_progress_bar=false",
                              *overrides, config_name="eval", fast=False)
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize(("task", "monitor"), [("binary", "val/iou"), ("instance", "val/ap50")])
def test_eval_applies_tta_and_tiling_and_returns_the_monitored_metric(tmp_path, monkeypatch, task, monitor):
    ckpt = untrained(tmp_path, f"task={task}", "data.dataset.num_classes=1", *SMALL)
    seen = []  # the options every call of the predictor ran with
    maps = Predictor.maps

    def recording(self, network, images):
        seen.append((self.tta, self.tile_size, tuple(images.shape[-2:])))
        return maps(self, network, images)

    monkeypatch.setattr(Predictor, "maps", recording)
    result = evaluate(eval_config(tmp_path, ckpt, "split=val", "tta=flips", "tile_size=32"))
    # 4 validation images of 64 px in one batch, through the TTA + tiling predictor.
    assert seen == [("flips", 32, (64, 64))]
    assert result["monitor"] == monitor and result["tta"] == "flips" and result["tile_size"] == 32
    assert math.isfinite(result["final"][monitor]) and result["value"] == result["final"][monitor]
    if task == "instance":
        assert not [k for k in result["final"] if k.endswith("/iou")], result["final"]
        assert "val/loss" not in result["final"]  # averaged maps have no logits to score


def test_eval_refuses_tta_and_tiling_for_maskrcnn(tmp_path):
    ckpt = untrained(tmp_path, "task=instance", "model=maskrcnn", "encoder=resnet18",
                                "data.dataset.num_classes=1")
    for option in ("tta=flips", "tile_size=32"):
        with pytest.raises(ValueError, match="MaskRCNNTask predicts whole images only: tta and tile_size"):
            evaluate(eval_config(tmp_path, ckpt, option))


def labelled_folder(root, seeds, size=(48, 64)):
    """images/*.png and masks/*.png (0 = background, 255 = shape) of synthetic shapes."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for seed in seeds:
        image, classes, _ = render_shapes(seed, size)
        Image.fromarray(image).save(root / "images" / f"img{seed}.png")
        Image.fromarray(((classes > 0) * 255).astype(np.uint8)).save(root / "masks" / f"img{seed}.png")
    return root


def test_eval_on_a_new_labelled_folder_scores_every_image(tmp_path):
    """``data.root=<folder>`` alone: the checkpoint's folder settings (here its value_map, without
    which 255 is no class) on every image of the new folder, whatever the split's name."""
    trained_on = labelled_folder(tmp_path / "train", range(5))
    ckpt = untrained(tmp_path, "data=folder", f"data.root={trained_on}", "data.num_workers=0",
                                "data.dataset.value_map={0: 0, 255: 1}", "data.dataset.class_names=[background,shape]",
                                "trainer=cpu", "logger=none", "callbacks=none", *SMALL, fast=False)
    new = labelled_folder(tmp_path / "new", range(10, 17))
    result = evaluate(eval_config(tmp_path, ckpt, f"data.root={new}", "split=test"))

    # The definition, computed apart: IoU of the object class over every pixel of the 7 images.
    task = load_task(ckpt).eval()
    preprocess, inter, union = Preprocess(task), 0, 0
    for path in sorted((new / "images").glob("*.png")):
        with torch.inference_mode():
            pred = task.predict(preprocess(path)[1]).labels[0].numpy() == 1
        true = np.asarray(Image.open(new / "masks" / path.name)) == 255
        inter, union = inter + (pred & true).sum(), union + (pred | true).sum()
    assert union > 0
    assert result["final"]["test/iou"] == pytest.approx(inter / union, abs=1e-5)
    assert result["monitor"] == "test/iou" and result["value"] == result["final"]["test/iou"]


def test_eval_data_root_needs_a_folder_dataset(tmp_path):
    ckpt = untrained(tmp_path, *SMALL)  # synthetic data: nothing to read from a folder
    with pytest.raises(ValueError, match="is not read from a folder; give the folder's settings"):
        evaluate(eval_config(tmp_path, ckpt, f"data.root={tmp_path}"))
