"""The one LightningModule base: model, loss, optimizer/scheduler and metrics from config.

Subclasses say only what differs between problems: how many output channels, the loss mode, and
how the network's output becomes a ``Prediction``. Hyperparameters are plain dicts (the resolved
Hydra nodes), so a checkpoint rebuilds its task without Hydra and without the command line that
made it.

Every task meets one contract (binary, semantic, bottom-up instance, Mask R-CNN):

- ``forward(images)``: the network's output for images ``(N, C, H, W)`` of any size: logits
  ``(N, num_outputs, H, W)`` for the per-pixel tasks (Mask R-CNN: its detections);
- ``logits_to_probs(logits)``: per-pixel probability maps ``(N, K, H, W)``, what TTA and tiling
  average (per-pixel tasks only);
- ``postprocess(maps, valid=None)`` and ``predict(images, valid=None)``: a ``Prediction``
  (labels, maps, instances), ``predict`` running the network through the task's ``Predictor``.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import get_class, instantiate
from torch import nn

from segsweep.inference import Prediction, Predictor
from segsweep.losses import build_loss
from segsweep.metrics import segmentation_metrics
from segsweep.jobs.checkpoints import read_checkpoint

EVAL_STAGES = ("val", "test")


class SegmentationTask(L.LightningModule):
    """Base task. Args are the resolved config nodes of the same-named groups.

    Args:
        model: ``_partial_`` model factory (``conf/model``), completed with channels and classes.
        loss: ``_partial_`` loss factory (``conf/loss``), completed with the task's mode.
        optimizer: ``_partial_`` torch optimizer (``conf/optimizer``).
        scheduler: ``_partial_`` LR scheduler stepped each epoch (one with ``per_step = True``, e.g.
            ``segsweep.schedules.BudgetCosineLR``: each step, given the run's total steps), or ``None``.
        class_names: class names from the data, index = class id.
        in_channels: input channels from the data.
        ignore_index: mask value that loss and metrics skip.
        run_config: the whole resolved run config, kept in checkpoints for eval and predict.
        predictor: how validation, test and ``predict`` run the network (TTA, tiling); the plain
            one by default. An inference option, not a hyperparameter: not saved in checkpoints.
    """

    loss_mode: str  # "binary" or "multiclass": decided by the task, never by the loss config
    per_pixel_maps = True  # the network gives per-pixel maps, so TTA and tiling apply

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
        if not (self.per_pixel_maps or self.predictor.plain):
            raise ValueError(
                f"{type(self).__name__} predicts whole images only: tta and tile_size apply to the "
                f"tasks with per-pixel maps (binary, semantic, bottom-up instance); got {self.predictor}"
            )
        self.class_names = list(class_names)
        self.check_classes()
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()
        self.on_train_epoch_start()  # empty training-loss sums (see train_step_output)

    # -- what subclasses define ---------------------------------------------------------------
    def check_classes(self) -> None:
        """Raise if the data's classes do not fit this task."""

    @property
    def num_outputs(self) -> int:
        raise NotImplementedError

    def logits_to_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> the per-pixel probability maps ``(N, K, H, W)`` predictions are made from
        (binary and semantic: one per class)."""
        raise NotImplementedError

    def postprocess(self, probs: torch.Tensor, valid: torch.Tensor | None = None) -> Prediction:
        """Probability maps -> ``Prediction``; binary and semantic: each pixel's likeliest class
        (for binary maps ``[1 - p, p]`` that is ``p > 0.5``). ``valid`` marks the pixels to keep."""
        return Prediction(labels=probs.argmax(dim=1), probs=probs)

    # -- built from config ----------------------------------------------------------------------
    def configure_models(self) -> None:
        factory = instantiate(self.hparams.model)
        self.net = factory(in_channels=self.hparams.in_channels, classes=self.num_outputs)
        # An int (every spatial axis) or one per axis (3D nets: (z, y, x)).
        self.output_stride = getattr(self.net, "output_stride", 32)
        # Some decoders pool further than their stride (PAN): inputs must be at least this big.
        self.min_input_size = getattr(self.net, "min_input_size", self.output_stride)

    def configure_losses(self) -> None:
        self.criterion = build_loss(
            instantiate(self.hparams.loss), mode=self.loss_mode, ignore_index=self.hparams.ignore_index
        )

    def configure_metrics(self) -> None:
        metrics = segmentation_metrics(
            self.class_names, self.hparams.ignore_index, binary=self.loss_mode == "binary"
        )
        self.metrics = nn.ModuleDict({s: metrics.clone(prefix=f"{s}/") for s in EVAL_STAGES})

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.hparams.optimizer)(params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        make_scheduler = instantiate(self.hparams.scheduler)
        if getattr(getattr(make_scheduler, "func", None), "per_step", False):  # segsweep.schedules
            scheduler = make_scheduler(optimizer=optimizer, total_steps=self.trainer.estimated_stepping_batches)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        scheduler = make_scheduler(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # -- forward and steps ---------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for images ``(N, C, H, W)`` or volumes ``(N, C, D, H, W)`` of any size: padded
        at the end of each spatial axis to the output stride, cropped back."""
        sizes = images.shape[2:]
        strides, least = (per_axis(v, len(sizes)) for v in (self.output_stride, self.min_input_size))
        pads = [max(n + -n % s, m) - n for n, s, m in zip(sizes, strides, least, strict=True)]
        if any(pads):
            images = F.pad(images, [p for pad in reversed(pads) for p in (0, pad)])  # last axis first
        return self.net(images)[(..., *(slice(0, n) for n in sizes))]

    def predict(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> Prediction:
        """The ``Prediction`` for ``images``, the network run through this task's predictor."""
        maps = self.predictor.maps(lambda x: self.logits_to_probs(self(x)), images)
        return self.postprocess(maps, valid)

    def shared_step(self, batch: dict, stage: str) -> dict:
        if stage != "train" and not self.predictor.plain:
            # Averaged probabilities have no logits to take a loss of: metrics only.
            preds = self.predict(batch["image"]).labels
            self.metrics[stage].update(preds, batch["mask"])
            return {"preds": preds}
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["mask"])
        batch_size = batch["image"].shape[0]
        terms = getattr(self.criterion, "last_terms", {})
        if stage == "train":
            return self.train_step_output(loss, terms, batch_size)
        self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=batch_size, sync_dist=True)
        for term, value in terms.items():
            self.log(f"{stage}/loss/{term}", value, on_epoch=True, batch_size=batch_size, sync_dist=True)
        preds = self.postprocess(self.logits_to_probs(logits)).labels
        self.metrics[stage].update(preds, batch["mask"])
        return {"loss": loss, "preds": preds}

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
        # Lightning sends step values to the loggers after steps where (steps done + 1) is a
        # multiple of log_every_n_steps: a value logged on any other step never reaches them.
        if trainer is None or (trainer.global_step + 1) % max(trainer.log_every_n_steps, 1) == 0:
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)
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

    def on_validation_epoch_end(self) -> None:
        self.log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch_metrics("test")

    # -- checkpoints -----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["segsweep_task"] = f"{type(self).__module__}.{type(self).__qualname__}"


def per_axis(value: int | tuple[int, ...], axes: int) -> tuple[int, ...]:
    """A stride or size given once for every spatial axis, or one per axis, as one per axis."""
    values = tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * axes
    if len(values) != axes:
        raise ValueError(f"the model's stride/size {value} has {len(values)} axes but the input has {axes} "
                         "spatial axes (a 3D model needs volumes (N, C, D, H, W), a 2D one images)")
    return values


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
