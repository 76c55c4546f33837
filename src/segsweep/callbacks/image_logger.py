"""Validation predictions as overlays: a PNG in the run dir, and to W&B / TensorBoard if present."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image

from segsweep.visualize import prediction_grid, to_display


def wandb_masks(preds: torch.Tensor, targets: torch.Tensor, class_names: list[str], ignore_index: int) -> list[dict]:
    """Per image, the ``masks`` argument of ``wandb.Image``: predicted and true class maps with the
    class names, so W&B's mask viewer toggles each class. Ignored pixels get their own label, id
    ``len(class_names)`` (W&B stores mask ids as 8-bit: 255 would not survive)."""
    labels = dict(enumerate(class_names))
    ignored = len(class_names)
    masks = []
    for pred, target in zip(preds, targets, strict=True):
        target = torch.where(target == ignore_index, ignored, target)
        masks.append({
            "predictions": {"mask_data": pred.cpu().numpy().astype(np.uint8), "class_labels": labels},
            "ground_truth": {"mask_data": target.cpu().numpy().astype(np.uint8),
                             "class_labels": {**labels, ignored: "ignored"}},
        })
    return masks


class PredictionImageLogger(L.Callback):
    """Every ``every_n_epochs``, the first ``max_images`` validation images with predicted and true
    masks. Rank zero only; each logger gets them in its own way: W&B as images with prediction and
    ground-truth masks (its interactive viewer), TensorBoard and the run dir as one picture of
    image | prediction | target rows."""

    def __init__(self, every_n_epochs: int = 5, max_images: int = 4, dirname: str = "predictions"):
        self.every_n_epochs = every_n_epochs
        self.max_images = max_images
        self.dirname = dirname

    @rank_zero_only
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        due = trainer.current_epoch % self.every_n_epochs == 0 or trainer.current_epoch == trainer.max_epochs - 1
        if batch_idx != 0 or trainer.sanity_checking or not due or not outputs or "preds" not in outputs:
            return
        n, epoch, ignore = self.max_images, trainer.current_epoch, pl_module.hparams.ignore_index
        instance = "instances" in outputs
        targets = batch["instances"] if instance else batch["mask"]
        preds = outputs["instances"] if instance else outputs["preds"]
        if batch["image"].ndim == 5:  # volumes (N, C, D, H, W): their middle slices
            middle = batch["image"].shape[2] // 2
            batch = {**batch, "image": batch["image"][:, :, middle], "mask": batch["mask"][:, middle]}
            targets, preds = targets[:, middle], preds[:, middle]
            outputs = {**outputs, "preds": outputs["preds"][:, middle]}
        grid = prediction_grid(batch["image"][:n], preds[:n], targets[:n], ignore_index=ignore, instance=instance)
        folder = Path(trainer.default_root_dir) / self.dirname
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(folder / f"epoch_{epoch:03d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                # Class maps (instance tasks: each object painted with its class), so classes toggle.
                masks = wandb_masks(outputs["preds"][:n], batch["mask"][:n], pl_module.class_names, ignore)
                logger.log_image("val/predictions", [to_display(image) for image in batch["image"][:n]],
                                 step=trainer.global_step, masks=masks,
                                 caption=[f"epoch {epoch}: {name}" for name in batch["name"][:n]])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/predictions", grid, trainer.global_step, dataformats="HWC")
