"""Binary and semantic segmentation: one class per pixel, only what differs between the two."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from segsweep.inference import Prediction
from segsweep.metrics import segmentation_metrics
from segsweep.tasks.base import EVAL_STAGES
from segsweep.tasks.per_pixel import PerPixelTask


class PixelClassTask(PerPixelTask):
    """Each pixel's likeliest class, scored by IoU, Dice and accuracy (``segsweep.metrics``)."""

    def configure_metrics(self) -> None:
        metrics = segmentation_metrics(
            self.class_names, self.hparams.ignore_index, binary=self.loss_mode == "binary"
        )
        self.metrics = nn.ModuleDict({s: metrics.clone(prefix=f"{s}/") for s in EVAL_STAGES})

    def postprocess(self, probs: torch.Tensor, valid: torch.Tensor | None = None) -> Prediction:
        """Probability maps -> each pixel's likeliest class (for binary maps ``[1 - p, p]`` that is
        ``p > 0.5``); every pixel is kept (metrics skip the ignored ones)."""
        return Prediction(labels=probs.argmax(dim=1), probs=probs)

    def score(self, prediction: Prediction, batch: dict, stage: str) -> dict:
        self.metrics[stage].update(prediction.labels, batch["mask"])
        return {"preds": prediction.labels}

    def log_epoch_metrics(self, stage: str) -> None:
        with warnings.catch_warnings():
            # After a reset, metrics sharing a compute group's state (IoU, per-class IoU) warn that
            # compute() came before update() though the shared state was updated: the values are
            # right (checked against fresh metrics), the warning is torchmetrics' bookkeeping.
            warnings.filterwarnings("ignore", message=r"The ``compute`` method of metric .* before the ``update``")
            values = self.metrics[stage].compute()
        self.log(f"{stage}/iou", values.pop(f"{stage}/iou"), prog_bar=True)
        self.log_dict(values)
        self.metrics[stage].reset()


class BinarySegmentationTask(PixelClassTask):
    """Object vs background: one output channel, sigmoid, class 1 is the object."""

    loss_mode = "binary"

    def check_classes(self) -> None:
        if len(self.class_names) != 2:
            raise ValueError(
                f"task=binary needs exactly 2 classes (background, object) but the data has "
                f"{len(self.class_names)}: {self.class_names}; use task=semantic"
            )

    @property
    def num_outputs(self) -> int:
        return 1

    def logits_to_probs(self, logits: torch.Tensor) -> torch.Tensor:
        foreground = torch.sigmoid(logits)
        return torch.cat([1 - foreground, foreground], dim=1)


class SemanticSegmentationTask(PixelClassTask):
    """One class per pixel: one output channel per class, softmax."""

    loss_mode = "multiclass"

    def check_classes(self) -> None:
        if len(self.class_names) < 2:
            raise ValueError(f"task=semantic needs at least 2 classes, the data has {self.class_names}")

    @property
    def num_outputs(self) -> int:
        return len(self.class_names)

    def logits_to_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=1)
