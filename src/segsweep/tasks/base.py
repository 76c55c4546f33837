"""The one LightningModule base: what every task shares, and the hooks each task fills in.

Shared here: hyperparameters (plain dicts, the resolved Hydra nodes, so a checkpoint rebuilds its
task without Hydra), the network from its ``_partial_`` factory, optimizer and schedule, the one
step of every stage (``shared_step``), training-loss accounting and checkpoints. Each task class
says only what differs (torchgeo's ``BaseTask``):

- ``PerPixelTask`` (``per_pixel.py``): a network of per-pixel logits, their loss and probability
  maps, run through the ``Predictor`` (TTA, tiling);
  ``BinarySegmentationTask`` / ``SemanticSegmentationTask`` (``segmentation.py``) on top: a class
  per pixel, IoU metrics;
- ``InstanceTask`` (``instance_base.py``): objects scored by the instance metrics;
  ``InstanceSegmentationTask`` (``instance.py``, bottom-up: per-pixel maps + watershed) and
  ``MaskRCNNTask`` (``maskrcnn.py``, top-down detections) on top.

Every task meets one contract:

- ``forward(images)``: the network's output for images ``(N, C, H, W)`` of any size (per-pixel
  logits ``(N, num_outputs, H, W)``; Mask R-CNN: its detections);
- ``postprocess(outputs, valid=None)`` and ``predict(images, valid=None)``: a ``Prediction``
  (labels, maps, instances); per-pixel tasks run the network through their ``Predictor`` (TTA,
  tiling), the others predict whole images and refuse any but the plain predictor.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class, instantiate

from segsweep.callbacks.logging_steps import is_logging_step
from segsweep.inference import Prediction, Predictor
from segsweep.jobs.checkpoints import read_checkpoint

EVAL_STAGES = ("val", "test")


class SegmentationTask(L.LightningModule):
    """Base task. Args are the resolved config nodes of the same-named groups.

    Args:
        model: ``_partial_`` model factory (``conf/model``), completed with channels and classes.
        loss: ``_partial_`` loss factory (``conf/loss``), completed with the task's mode.
        optimizer: ``_partial_`` torch optimizer (``conf/optimizer``).
        scheduler: ``_partial_`` LR scheduler (``conf/scheduler``) stepped each epoch, or each step
            with ``interval: step`` (then given ``total_steps``: the run's optimizer steps), or ``None``.
        class_names: class names from the data, index = class id.
        in_channels: input channels from the data.
        ignore_index: mask value that loss and metrics skip.
        run_config: the whole resolved run config, kept in checkpoints for eval and predict.
        predictor: how validation, test and ``predict`` run the network (TTA, tiling); the plain
            one by default. An inference option, not a hyperparameter: not saved in checkpoints.
    """

    def __init__(
        self,
        model: dict,
        loss: dict,
        optimizer: dict,
        class_names: list[str],
        in_channels: int,
        ignore_index: int = 255,
        scheduler: dict | None = None,
        run_config: dict | None = None,
        predictor: Predictor | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["predictor"])
        self.predictor = predictor or Predictor()
        self.check_predictor()
        self.class_names = list(class_names)
        self.check_classes()
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()
        self.postprocess_seconds = 0.0  # see postprocessing()
        self.on_train_epoch_start()  # empty training-loss sums (see train_step_output)

    # -- what subclasses define ---------------------------------------------------------------
    def check_classes(self) -> None:
        """Raise if the data's classes do not fit this task."""

    def check_predictor(self) -> None:
        """Raise if this task cannot run its network through ``self.predictor``. Here the network
        predicts whole images in one call (``predict``), so only the plain predictor;
        ``PerPixelTask`` averages per-pixel maps over TTA views and tiles."""
        if not self.predictor.plain:
            raise ValueError(
                f"{type(self).__name__} predicts whole images only: tta and tile_size apply to the "
                f"tasks with per-pixel maps (binary, semantic, bottom-up instance); got {self.predictor}"
            )

    @property
    def num_outputs(self) -> int:
        """What the network's factory is completed with as ``classes``."""
        raise NotImplementedError

    def configure_losses(self) -> None:
        """The loss modules; none when the network computes its own losses (Mask R-CNN)."""

    def configure_metrics(self) -> None:
        """``self.metrics``: one metric collection per evaluation stage (``EVAL_STAGES``)."""
        raise NotImplementedError

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training step's loss and its named terms (logged as ``train/loss/<term>``)."""
        raise NotImplementedError

    def evaluation_loss(self, outputs: Any, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        """The loss of the network's evaluation ``outputs`` and its terms, or ``None`` when the
        outputs carry none."""
        raise NotImplementedError

    def postprocess(self, outputs: Any, valid: torch.Tensor | None = None) -> Prediction:
        """The network's outputs -> ``Prediction``; ``valid`` ``(N, H, W)`` marks the pixels to keep."""
        raise NotImplementedError

    def to_prediction(self, outputs: Any, valid: torch.Tensor | None = None) -> Prediction:
        """What validation makes of the network's outputs: ``postprocess`` of them."""
        return self.postprocess(outputs, valid)

    def score(self, prediction: Prediction, batch: dict, stage: str) -> dict:
        """Update the stage's metrics with a batch's prediction; the step's outputs (``preds``,
        and what callbacks draw)."""
        raise NotImplementedError

    def log_epoch_metrics(self, stage: str) -> None:
        """Compute, log and reset the stage's metrics at its epoch's end."""
        raise NotImplementedError

    # -- built from config ----------------------------------------------------------------------
    def configure_models(self) -> None:
        factory = instantiate(self.hparams.model)
        self.net = factory(in_channels=self.hparams.in_channels, classes=self.num_outputs)

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.hparams.optimizer)(params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        settings = dict(self.hparams.scheduler)
        interval = settings.pop("interval", "epoch")  # Lightning's key: when the scheduler steps
        if interval not in ("epoch", "step"):
            raise ValueError(f"scheduler.interval={interval!r}: the scheduler steps each 'epoch' or each 'step'")
        # A per-step schedule is given the run's length in optimizer steps (torch's OneCycleLR and
        # segsweep's BudgetCosineLR both call it total_steps).
        lengths = {"total_steps": self.trainer.estimated_stepping_batches} if interval == "step" else {}
        scheduler = instantiate(settings)(optimizer=optimizer, **lengths)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    # -- prediction and the steps ----------------------------------------------------------------
    def predict(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> Prediction:
        """The ``Prediction`` for ``images``: the network on whole images, post-processed."""
        return self.postprocess(self(images), valid)

    def shared_step(self, batch: dict, stage: str) -> dict:
        """One step of any stage: the training loss, or the evaluation loss (when the network's
        outputs have one) and the metrics of the prediction."""
        size = batch["image"].shape[0]
        if stage == "train":
            loss, terms = self.training_loss(batch)
            return self.train_step_output(loss, terms, size)
        valid = batch["mask"] != self.hparams.ignore_index
        if not self.predictor.plain:
            # Averaged maps (TTA, tiles) have no logits to take a loss of: metrics only.
            prediction = self.predict(batch["image"], valid)
            with self.postprocessing():
                return self.score(prediction, batch, stage)
        outputs = self(batch["image"])
        losses = self.evaluation_loss(outputs, batch)
        loss = None
        if losses is not None:
            loss, terms = losses
            self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=size, sync_dist=True)
            for term, value in terms.items():
                self.log(f"{stage}/loss/{term}", value, on_epoch=True, batch_size=size, sync_dist=True)
        with self.postprocessing():
            return {"loss": loss, **self.score(self.to_prediction(outputs, valid), batch, stage)}

    @contextmanager
    def postprocessing(self):
        """Marks a step's post-processing (outputs -> prediction -> metric updates): its seconds
        add up in ``postprocess_seconds``, which ``segsweep.callbacks.PostprocessTime`` reports
        per epoch for the tasks that ask for it (instance tasks)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.postprocess_seconds += time.perf_counter() - started

    # Training loss: summed on the device each step, logged as epoch means at the epoch's end and
    # per step only every log_every_n_steps. A self.log call costs ~1 ms of Python
    # (scripts/bench_overhead.py), against 10-50 ms for a whole GPU step; a running sum, microseconds.
    def train_step_output(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], batch_size: int) -> dict:
        """Account one training step's loss and terms; the dict ``training_step`` returns."""
        values = {"train/loss": loss, **{f"train/loss/{t}": v for t, v in terms.items()}}
        for name, value in values.items():
            self._train_sums[name] = self._train_sums.get(name, 0.0) + value.detach() * batch_size
        self._train_images += batch_size
        trainer = self._trainer  # None when a step runs outside a Trainer (tests, notebooks)
        # For the loggers only: a prog_bar value is read off the device after every step
        # (segsweep.callbacks.ProgressBar reads this one on logging steps itself).
        if trainer is None or is_logging_step(trainer):
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, batch_size=batch_size)
        return {"loss": loss}

    def train_loss_sums(self) -> tuple[dict[str, torch.Tensor], int]:
        """This epoch's summed training loss and terms (``train/loss``, ``train/loss/<term>``) over
        this rank's images so far, and that number of images: RunSummary reduces them over ranks."""
        return dict(getattr(self, "_train_sums", {})), getattr(self, "_train_images", 0)

    def on_train_epoch_start(self) -> None:
        self._train_sums: dict[str, torch.Tensor] = {}
        self._train_images = 0

    def on_train_epoch_end(self) -> None:
        sums, images = self.train_loss_sums()
        for name, total in sums.items():
            self.log(name, total / max(images, 1), sync_dist=True)

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        return self.shared_step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self.shared_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self.shared_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> Prediction:
        return self.predict(batch["image"])

    def on_validation_epoch_end(self) -> None:
        self.log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch_metrics("test")

    # -- checkpoints -----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["segsweep_task"] = f"{type(self).__module__}.{type(self).__qualname__}"


def load_task(
    ckpt_path: str, map_location: str | torch.device = "cpu", predictor: Predictor | None = None
) -> SegmentationTask:
    """Rebuild the task a checkpoint was trained with (its class, model, classes, config), run by
    ``predictor`` (TTA, tiling; plain by default).

    The encoder's pretrained-weights source is switched off: the checkpoint's own weights replace
    them at once, and loading must not need the network.
    """
    checkpoint = read_checkpoint(ckpt_path, map_location=map_location)  # names the file if unusable
    task_class = get_class(checkpoint["segsweep_task"])
    model = dict(checkpoint["hyper_parameters"]["model"])
    model.update({k: None for k in ("encoder_weights", "weights_path") if k in model})
    return task_class.load_from_checkpoint(
        ckpt_path, map_location=map_location, model=model, predictor=predictor, weights_only=False
    )
