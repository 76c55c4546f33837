"""What validation shows: W&B gets each image with prediction and ground-truth masks and their class
names (its mask viewer), the run dir a picture; W&B runs say whether they train or evaluate."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch.loggers import WandbLogger

from segsweep.callbacks import PredictionImageLogger


def test_wandb_gets_images_with_class_masks(tmp_path, monkeypatch):
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    logged = []
    monkeypatch.setattr(logger, "log_metrics", lambda metrics, step=None: logged.append((metrics, step)))
    task = SimpleNamespace(class_names=["background", "cell", "debris"], hparams=SimpleNamespace(ignore_index=255))
    trainer = SimpleNamespace(current_epoch=0, max_epochs=3, sanity_checking=False, global_step=7,
                              default_root_dir=str(tmp_path), loggers=[logger])
    mask = torch.zeros(2, 8, 10, dtype=torch.long)
    mask[0, :2], mask[1, :, :3], mask[1, 0, 0] = 1, 2, 255  # 255: not labelled
    preds = torch.zeros(2, 8, 10, dtype=torch.long)
    preds[0, 4:] = 2
    batch = {"image": torch.randn(2, 3, 8, 10), "mask": mask, "name": ["a", "b"]}

    PredictionImageLogger(every_n_epochs=1, max_images=4).on_validation_batch_end(
        trainer, task, {"preds": preds}, batch, batch_idx=0)

    ((metrics, step),) = logged
    images = metrics["val/predictions"]
    assert step == 7 and len(images) == 2 and images[1]._caption == "epoch 0: b"
    for image, pred, true in zip(images, preds, mask, strict=True):
        shown, truth = image._masks["predictions"]._val, image._masks["ground_truth"]._val
        assert shown["class_labels"] == {0: "background", 1: "cell", 2: "debris"}
        assert truth["class_labels"] == {0: "background", 1: "cell", 2: "debris", 3: "ignored"}
        assert np.array_equal(shown["mask_data"], pred.numpy())
        assert np.array_equal(truth["mask_data"], np.where(true.numpy() == 255, 3, true.numpy()))
    assert (tmp_path / "predictions" / "epoch_000.png").is_file()


@pytest.mark.parametrize(("module", "args", "job_type"), [
    ("segsweep.train", [], "train"),
    ("segsweep.eval", ["ckpt_path=any.ckpt"], "eval"),
])
def test_wandb_job_type_names_the_entry_point(monkeypatch, capsys, module, args, job_type):
    """The composed logger config of each command (as ``--cfg job --resolve`` prints it)."""
    app = __import__(module, fromlist=["main"])
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", [module, *args, "logger=wandb", "--cfg", "job", "--resolve",
                                      "-p", "logger.wandb.job_type"])
    app.main()
    GlobalHydra.instance().clear()
    assert capsys.readouterr().out.strip() == job_type
