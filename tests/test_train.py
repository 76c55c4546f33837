"""Training through Hydra: every architecture, the entry points, reproducibility, bad config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_ENCODER
from hydra.errors import InstantiationException, MissingConfigException
from omegaconf import OmegaConf

from segsweep.train import build_datamodule, build_task, train

# 2D models on images (Mask R-CNN: tests/test_instance_tasks.py; classic_unet3d: tests/test_volumes.py).
SEMANTIC_MODELS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")
                         if not p.stem.startswith("maskrcnn") and p.stem != "classic_unet3d")
# Encoders an architecture needs instead of the tiny default (smp's own constraints).
ENCODER_FOR = {"dpt": "tu-test_vit"}


@pytest.mark.parametrize("model", SEMANTIC_MODELS)
def test_every_architecture_takes_a_training_step(make_cfg, model):
    cfg = make_cfg(f"model={model}", f"encoder={ENCODER_FOR.get(model, TINY_ENCODER)}",
                   "task=semantic", "loss=ce_dice")
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule)
    batch = next(iter(datamodule.train_dataloader()))
    optimizer = torch.optim.SGD(task.parameters(), lr=0.01)
    before = [p.detach().clone() for p in task.parameters()]
    loss = task.training_step(batch, 0)["loss"]
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, task.parameters(), strict=True))
    task.eval()
    with torch.no_grad():  # any size: 50 x 70 is no multiple of any output stride
        logits = task(torch.randn(1, 3, 50, 70))
    assert logits.shape == (1, len(datamodule.class_names), 50, 70)


def test_fit_and_test_write_metrics(make_cfg, tmp_path):
    cfg = make_cfg(f"encoder={TINY_ENCODER}", "trainer.max_epochs=2")
    result = train(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["status"] == "completed" and saved["epochs"] == 2 and len(saved["history"]) == 2
    for key in ("val/iou", "val/dice", "val/acc", "val/iou/shape", "val/iou/background", "test/iou"):
        assert 0.0 <= saved["final"][key] <= 1.0, key
    assert saved["best"]["val/iou"] == max(row["val/iou"] for row in saved["history"])
    assert result["value"] == saved["best"]["val/iou"]
    assert saved["params"] > 0 and saved["images_per_second"] > 0
    assert "encoder=tu-mobilenetv3_small_050" in saved["overrides"]
    assert Path(saved["best_checkpoint"]).is_file()


def test_same_seed_same_metrics(make_cfg, tmp_path):
    first = train(make_cfg(f"encoder={TINY_ENCODER}", f"paths.output_dir={tmp_path}/a"))
    second = train(make_cfg(f"encoder={TINY_ENCODER}", f"paths.output_dir={tmp_path}/b"))
    assert first["final"] == second["final"]


def test_semantic_task_on_synthetic_shapes(make_cfg):
    result = train(make_cfg(f"encoder={TINY_ENCODER}", "task=semantic", "loss=ce_dice"))
    assert {"val/iou/disc", "val/iou/rectangle", "val/iou/triangle"} <= set(result["final"])


def test_local_encoder_weights_through_config(make_cfg, tmp_path):
    source = build_task(make_cfg("model=unet", f"encoder={TINY_ENCODER}"), build_datamodule(make_cfg()))
    path = tmp_path / "encoder.pth"
    torch.save(source.net.encoder.state_dict(), path)
    cfg = make_cfg("model=unet", f"encoder={TINY_ENCODER}", f"encoder.weights_path={path}", "seed=7")
    task = build_task(cfg, build_datamodule(cfg))
    for name, value in source.net.encoder.state_dict().items():
        assert torch.equal(task.net.encoder.state_dict()[name], value), name


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["model=unet_v9"], MissingConfigException, r"(?s)model/unet_v9.*Available options in 'model'.*unetplusplus"),
        (["loss=dicey"], MissingConfigException, r"(?s)loss/dicey.*Available options in 'loss'.*power_jaccard"),
        (["model=unet", "encoder.name=resnet_9000"], ValueError, r"resnet_9000.*resnet18"),
        (["loss=cross_entropy"], ValueError, r"'cross_entropy' is multiclass-only.*binary.*bce"),
        (["augment.crop_size=256"], ValueError, r"sample 'synthetic_0_00000'.*augment.crop_size"),
        (["task=binary", "data.dataset.target=semantic"], ValueError, r"task=binary needs exactly 2 classes"),
    ],
)
def test_bad_config_stops_early_with_a_clear_error(make_cfg, overrides, error, message):
    # Errors raised while Hydra instantiates an object arrive wrapped, message included.
    with pytest.raises((error, InstantiationException), match=message):
        train(make_cfg(f"encoder={TINY_ENCODER}", *overrides))


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "", "WANDB_API_KEY": "", "HOME": str(cwd), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_train_and_eval_cli_end_to_end(tmp_path):
    """segsweep-train as a user runs it (W&B offline, default callbacks), then segsweep-eval."""
    run_dir = tmp_path / "run"
    fast = ["trainer=cpu", "trainer.max_epochs=1", f"encoder={TINY_ENCODER}", "data.dataset.image_size=64",
            "data.splits.train.num_images=8", "data.splits.val.num_images=4", "data.splits.test.num_images=4",
            "augment.crop_size=64", "callbacks.image_logger.every_n_epochs=1"]
    done = run_cli("segsweep.train", *fast, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "logging offline" in done.stdout + done.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["run_name"] == "classic_unet-bce_dice"
    assert list((run_dir / "wandb").glob("offline-run-*"))
    assert (run_dir / "predictions" / "epoch_000.png").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    eval_dir = tmp_path / "eval"
    done = run_cli("segsweep.eval", f"ckpt_path={metrics['best_checkpoint']}", "trainer=cpu",
                   "split=test", f"hydra.run.dir={eval_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    assert evaluated["final"]["test/iou"] == pytest.approx(metrics["final"]["test/iou"], abs=1e-6)


def test_checkpoint_keeps_the_run_config(make_cfg, tmp_path):
    result = train(make_cfg(f"encoder={TINY_ENCODER}"))
    checkpoint = torch.load(result["best_checkpoint"], weights_only=False)
    config = OmegaConf.create(checkpoint["hyper_parameters"]["run_config"])
    assert config.model._target_.endswith("ClassicUNet")
    assert checkpoint["segsweep_task"].endswith("BinarySegmentationTask")


def test_the_step_loss_reaches_the_logger_every_log_every_n_steps(make_cfg, tmp_path, monkeypatch):
    # 2 epochs of 4 batches, logged every 2nd step: Lightning writes step values after steps 2, 4,
    # 6 and 8 (0-based 1, 3, 5, 7), and each row must hold that step's own loss (a value the task
    # logged on another step came out one step stale, or not at all across an epoch's end).
    import csv

    from segsweep.tasks import SegmentationTask
    from segsweep.train import train

    losses = {}
    record = SegmentationTask.train_step_output

    def recording(self, loss, terms, batch_size):
        losses[self.trainer.global_step] = loss.item()
        return record(self, loss, terms, batch_size)

    monkeypatch.setattr(SegmentationTask, "train_step_output", recording)
    train(make_cfg("logger=csv", "trainer.max_epochs=2", "trainer.log_every_n_steps=2", "data.batch_size=2"))
    rows = list(csv.DictReader((tmp_path / "csv" / "version_0" / "metrics.csv").open()))
    logged = {int(row["step"]): float(row["train/loss_step"]) for row in rows if row.get("train/loss_step")}
    assert sorted(logged) == [1, 3, 5, 7]
    assert logged == pytest.approx({step: losses[step] for step in (1, 3, 5, 7)})
