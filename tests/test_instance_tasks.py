"""task=instance through Hydra: bottom-up (any smp model) and Mask R-CNN each fit + test a step;
the task classes (one step, no mode flag), old checkpoints, the post-processing time callback."""

from __future__ import annotations

import math
import resource

import lightning as L
import numpy as np
import pytest
import torch
from conftest import TINY_ENCODER, untrained_checkpoint

from segsweep.inference import Prediction
from segsweep.instance.postprocess import Instances
from segsweep.losses import WeightedSum
from segsweep.models import build_maskrcnn
from segsweep.tasks import InstanceSegmentationTask, InstanceTask, MaskRCNNTask, PerPixelTask, load_task
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


# -- the task classes ------------------------------------------------------------------------------
def test_each_family_is_its_own_class_with_one_step(make_cfg):
    """Both instance families share scoring (InstanceTask), only the bottom-up one has per-pixel
    maps, and every task runs the base class's one step."""
    assert issubclass(InstanceSegmentationTask, InstanceTask) and issubclass(MaskRCNNTask, InstanceTask)
    assert issubclass(InstanceSegmentationTask, PerPixelTask) and not issubclass(MaskRCNNTask, PerPixelTask)
    assert not issubclass(MaskRCNNTask, InstanceSegmentationTask)
    for task in (InstanceSegmentationTask, MaskRCNNTask):
        assert "shared_step" not in vars(task) and not hasattr(task, "per_pixel_maps")
    assert not hasattr(MaskRCNNTask, "logits_to_probs")  # detections, not maps


@pytest.mark.parametrize(
    ("kind", "overrides", "old_path"),
    [
        ("bottom_up", ["model=unet", "+model.decoder_channels=[16,8,8,8,8]"],
         "segsweep.tasks.instance.InstanceSegmentationTask"),
        ("maskrcnn", ["model=maskrcnn", "encoder=resnet18", *SMALL_RCNN], "segsweep.tasks.maskrcnn.MaskRCNNTask"),
    ],
)
def test_checkpoints_of_the_old_layout_still_load(make_cfg, tmp_path, kind, overrides, old_path):
    """A checkpoint as the code before the task split wrote it: the task class by its old path,
    Mask R-CNN's builder at its old place (segsweep.tasks.maskrcnn.build_maskrcnn) and the
    bottom-up settings in Mask R-CNN's hyperparameters too (it subclassed the bottom-up task)."""
    cfg = make_cfg("task=instance", f"encoder={TINY_ENCODER}", "data.dataset.num_classes=1", *overrides)
    path = untrained_checkpoint(cfg, tmp_path / "new.ckpt")
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["segsweep_task"] = old_path
    hparams = checkpoint["hyper_parameters"]
    if kind == "maskrcnn":
        hparams["model"] = {**hparams["model"], "_target_": "segsweep.tasks.maskrcnn.build_maskrcnn"}
    hparams.update({"encoding": "core", "core_fraction": 0.5, "boundary_width": 1, "channel_weights": None,
                    "postprocess": {"method": "watershed", "min_size": 8}, "rand_vi": False})
    torch.save(checkpoint, tmp_path / "old.ckpt")

    task = load_task(str(tmp_path / "old.ckpt")).eval()
    assert f"{type(task).__module__}.{type(task).__qualname__}" == old_path
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(task.state_dict()[key], value), key
    with torch.inference_mode():
        prediction = task.predict(torch.randn(1, 3, 64, 64))
    assert prediction.labels.shape == (1, 64, 64) and len(prediction.instances) == 1


# -- post-processing: the callback's time, the batch split, the painted labels ---------------------
def test_postprocess_time_comes_from_a_callback_the_instance_tasks_ask_for(make_cfg):
    """Any Trainer (here one without callbacks) logs time/postprocess for instance tasks, for
    validation and test, and nothing of it for the per-pixel class tasks."""
    for task_name, timed in (("instance", True), ("binary", False)):
        cfg = make_cfg(f"task={task_name}", f"encoder={TINY_ENCODER}", "model=unet",
                       "+model.decoder_channels=[16,8,8,8,8]")
        datamodule = build_datamodule(cfg)
        task = build_task(cfg, datamodule)
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
        trainer.validate(task, datamodule=datamodule, verbose=False)
        trainer.test(task, datamodule=datamodule, verbose=False)
        logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("time/")}
        if not timed:
            assert not logged
            continue
        assert set(logged) == {"time/test_postprocess", "time/test_postprocess_fraction"}  # test came last
        assert logged["time/test_postprocess"] > 0 and 0 < logged["time/test_postprocess_fraction"] <= 1
        assert "test/ap50" in trainer.callback_metrics  # the metrics the callback timed were logged


def test_postprocess_workers_give_the_same_objects(make_cfg):
    cfg = make_cfg("task=instance", f"encoder={TINY_ENCODER}", "data.dataset.num_classes=3")
    task = build_task(cfg, build_datamodule(cfg))
    probs = torch.rand(4, task.num_outputs, 48, 40)
    probs[:, 2:] = probs[:, 2:].softmax(1)
    plain = task.postprocess(probs)
    task.hparams.postprocess = {**task.hparams.postprocess, "workers": 2}
    pooled = task.postprocess(probs)
    assert torch.equal(plain.labels, pooled.labels)
    for a, b in zip(plain.instances, pooled.instances, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_labels_painted_from_instances_equal_the_torch_painting():
    """Prediction.from_instances paints in numpy; the torch indexing it replaced, as reference."""
    rng = np.random.default_rng(0)
    found = []
    for n in (0, 1, 7):
        labels = rng.integers(0, n + 1, (33, 47)).astype(np.int64)
        found.append(Instances(labels, rng.integers(1, 4, n).astype(np.int64), rng.random(n).astype(np.float32)))
    reference = torch.stack([
        torch.from_numpy(np.concatenate([[0], f.classes]).astype(np.int64))[torch.from_numpy(f.labels)] for f in found
    ])
    painted = Prediction.from_instances(found).labels
    assert painted.dtype == reference.dtype == torch.int64 and torch.equal(painted, reference)


# -- the light Mask R-CNN ------------------------------------------------------------------------
def test_light_maskrcnn_builds_small_and_trains_a_step_fast(make_cfg):
    cfg = make_cfg("task=instance", "model=maskrcnn_light", "encoder=resnet18")
    assert cfg.task._target_.endswith("MaskRCNNTask")
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    task = build_task(cfg, datamodule)
    assert sum(p.numel() for p in task.parameters()) < 5e6  # the full network: 31M with resnet18
    assert not hasattr(task.net.backbone.body, "layer4")  # stages 1-3 only
    batch = next(iter(datamodule.train_dataloader()))
    optimizer = torch.optim.AdamW(task.parameters(), 1e-3)
    task.train()
    started = resource.getrusage(resource.RUSAGE_SELF)
    loss = task.training_step(batch, 0)["loss"]
    loss.backward()
    optimizer.step()
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = used.ru_utime + used.ru_stime - started.ru_utime - started.ru_stime
    assert math.isfinite(loss.item()) and cpu < 20, cpu  # ~1 CPU s on 2 idle cores (full network: ~30)


@pytest.mark.slow  # ~8 CPU minutes: docs/benchmarks.md, "Mask R-CNN on CPU"
def test_light_maskrcnn_learns_the_synthetic_shapes(make_cfg):
    """The documented command (segsweep-train task=instance model=maskrcnn_light) on the default
    synthetic data: val AP50 0.93 in the benchmark; this asks for a margin below it."""
    cfg = make_cfg("task=instance", "model=maskrcnn_light", "logger=none", "callbacks=none",
                   "+trainer.enable_progress_bar=false", fast=False)
    result = train(cfg)
    assert result["best"]["val/ap50"] >= 0.75, result["best"]
    assert result["final"]["test/ap50"] >= 0.7, result["final"]
