"""Validation predictions as overlays: a PNG in the run dir, and to W&B / TensorBoard if present."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image

from segsweep.visualize import prediction_grid


class PredictionImageLogger(L.Callback):
    """Every ``every_n_epochs``, the first ``max_images`` validation images with predicted and true
    masks. Rank zero only; each logger gets the picture in its own way."""

    def __init__(self, every_n_epochs: int = 5, max_images: int = 4, dirname: str = "predictions"):
        self.every_n_epochs = every_n_epochs
        self.max_images = max_images
        self.dirname = dirname

    @rank_zero_only
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        due = trainer.current_epoch % self.every_n_epochs == 0 or trainer.current_epoch == trainer.max_epochs - 1
        if batch_idx != 0 or trainer.sanity_checking or not due or not outputs or "preds" not in outputs:
            return
        n = self.max_images
        instance = "instances" in outputs
        targets = batch["instances"] if instance else batch["mask"]
        preds = outputs["instances"] if instance else outputs["preds"]
        grid = prediction_grid(batch["image"][:n], preds[:n], targets[:n],
                               ignore_index=pl_module.hparams.ignore_index, instance=instance)
        caption = f"epoch {trainer.current_epoch}: image | prediction | target"
        folder = Path(trainer.default_root_dir) / self.dirname
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(folder / f"epoch_{trainer.current_epoch:03d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/predictions", [grid], step=trainer.global_step, caption=[caption])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/predictions", grid, trainer.global_step, dataformats="HWC")
