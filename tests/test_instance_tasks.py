"""task=instance through Hydra: bottom-up (any smp model) and Mask R-CNN each fit + test a step."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_ENCODER

from segsweep.losses import WeightedSum
from segsweep.tasks import InstanceSegmentationTask, load_task
from segsweep.tasks.maskrcnn import build_maskrcnn
from segsweep.train import build_datamodule, build_task, train

# Few proposals and RoIs: an untrained RPN otherwise sends thousands of boxes through the heads.
SMALL_RCNN = [
    "model.detections_per_image=20",
    "+model.rpn_pre_nms_top_n_train=64",
    "+model.rpn_post_nms_top_n_train=32",
    "+model.rpn_pre_nms_top_n_test=64",
    "+model.rpn_post_nms_top_n_test=32",
    "+model.box_batch_size_per_image=32",
]
# Tiny and fast: 8 train / 4 val images of 64 px, one epoch, small decoder.
TINY = [
    "task=instance",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=1",
    "data.dataset.num_classes=1",
    "callbacks=default",  # checkpoints + the overlay callback on instance outputs
    "~callbacks.progress_bar",
    "callbacks.image_logger.every_n_epochs=1",
]


# One encoding is enough here: all three round-trip in test_instance_metrics.py.
@pytest.mark.parametrize("encoding", ["distance"])
def test_bottom_up_trains_a_step(make_cfg, tmp_path, encoding):
    cfg = make_cfg(
        *TINY,
        f"encoder={TINY_ENCODER}",
        f"task.encoding={encoding}",
        "loss=bce_dice",
        "model=unet", "+model.decoder_channels=[16,8,8,8,8]",
    )
    assert cfg.optimized_metric == "val/ap50"
    result = train(cfg)
    final = {**result["best"], **result["final"]}
    for key in (
        "val/ap50",
        "val/ap",
        "val/aji",
        "val/pq",
        "val/f1",
        "test/ap50",
        "time/postprocess",
        "train/loss/foreground",
        f"train/loss/{encoding}",
    ):
        assert key in final, key
    assert math.isfinite(final["train/loss"]) and 0 <= final["val/ap50"] <= 1
    reloaded = load_task(result["best_checkpoint"])  # instance settings are in it
    assert isinstance(reloaded, InstanceSegmentationTask) and reloaded.hparams.encoding == encoding
    assert 0 <= final["time/postprocess_fraction"] <= 1
    assert list((tmp_path / "predictions").glob("epoch_*.png")), "no instance overlay written"


def test_class_maps_with_several_classes(make_cfg):
    cfg = make_cfg(
        "task=instance", f"encoder={TINY_ENCODER}", "data.dataset.num_classes=3", "loss=dice"
    )
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule)
    assert task.num_outputs == 2 + 3  # foreground + core, then one map per shape class
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    logits = task(batch["image"])
    loss, terms = task.compute_loss(logits, batch)
    assert set(terms) == {"foreground", "core", "classes"} and loss.requires_grad
    # The class maps see object pixels only: background pixels carry no class gradient.
    logits = logits.detach().requires_grad_()
    task.compute_loss(logits, batch)[1]["classes"].backward()
    background = (batch["mask"] == 0)[:, None].expand_as(logits[:, 2:])
    assert logits.grad[:, 2:][background].abs().max() == 0
    assert logits.grad[:, 2:][~background].abs().max() > 0


def test_class_maps_of_a_binary_only_loss_use_ce_dice(make_cfg):
    cfg = make_cfg(
        "task=instance", f"encoder={TINY_ENCODER}", "data.dataset.num_classes=3", "loss=bce_dice"
    )
    task = build_task(cfg, build_datamodule(cfg))
    assert isinstance(task.class_criterion, WeightedSum)
    assert set(task.class_criterion.terms) == {"ce", "dice"}


def test_crop_without_objects_gives_a_finite_class_loss(make_cfg):
    cfg = make_cfg("task=instance", f"encoder={TINY_ENCODER}", "data.dataset.num_classes=3")
    task = build_task(cfg, build_datamodule(cfg))
    batch = {
        "image": torch.rand(2, 3, 32, 32),
        "mask": torch.zeros(2, 32, 32, dtype=torch.long),
        "instances": torch.zeros(2, 32, 32, dtype=torch.long),
    }
    loss, terms = task.compute_loss(task(batch["image"]), batch)
    assert torch.isfinite(loss) and terms["classes"] == 0


def test_maskrcnn_trains_a_step(make_cfg):
    cfg = make_cfg(*TINY, "model=maskrcnn", "encoder=resnet18", *SMALL_RCNN)
    assert cfg.task._target_.endswith("MaskRCNNTask")
    result = train(cfg)
    final = {**result["best"], **result["final"]}
    assert math.isfinite(final["train/loss"])
    for key in ("train/loss/mask", "train/loss/objectness", "val/ap50", "val/pq", "test/aji"):
        assert key in final, key


def test_maskrcnn_needs_instance_data(make_cfg):
    cfg = make_cfg("model=maskrcnn", "encoder=resnet18")
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    task = build_task(cfg, datamodule)
    batch = next(iter(datamodule.train_dataloader()))
    # Synthetic data follows the task's class (instances for Mask R-CNN); a folder of class masks
    # has none:
    del batch["instances"]
    with pytest.raises(ValueError, match="task=instance"):
        task.training_step(batch, 0)
    assert torch.is_tensor(batch["image"])


def test_maskrcnn_backbone_must_be_a_resnet():
    with pytest.raises(ValueError, match="'tu-mobilenetv3_small_050' is not one of"):
        build_maskrcnn(in_channels=1, classes=2, backbone=TINY_ENCODER)
    net = build_maskrcnn(
        in_channels=1, classes=3, backbone="resnet18"
    )  # grey input: new first conv
    assert net.backbone.body.conv1.in_channels == 1
