"""Bottom-up instance segmentation over any smp architecture: per-pixel maps, then watershed.

The net predicts a foreground map and a map that separates touching objects (``task.encoding``,
see ``segsweep.instance.encoding``), plus one channel per class when the data has more than one
object class. The class maps are trained on object pixels only (the foreground map already says
object or background) with a loss that weighs classes equally; see ``configure_losses``.
Targets are made from ``batch["instances"]`` in the step, on the batch's device.
Validation and test split the maps into objects (``segsweep.instance.postprocess``) and score
them with ``segsweep.instance.metrics``; ``MaskRCNNTask`` (top-down) reuses this evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from segsweep.inference import Prediction, Predictor
from segsweep.instance.encoding import CHANNELS, encode
from segsweep.instance.metrics import instance_metrics
from segsweep.instance.postprocess import Instances, describe, from_labels, split_objects
from segsweep.losses import build_loss, loss_configs
from segsweep.tasks.base import EVAL_STAGES, SegmentationTask


class InstanceSegmentationTask(SegmentationTask):
    """``task=instance``: bottom-up instances from any ``model=`` / ``encoder=`` / ``loss=``.

    Args (besides the base task's):
        encoding: target maps, ``core`` (default), ``distance`` or ``boundary``.
        core_fraction: ``core``: the share of an object's depth its core starts at.
        boundary_width: ``boundary``: border ring width in pixels.
        channel_weights: loss weight of each map (foreground, separator) and of the class maps.
        postprocess: keyword arguments of ``split_objects`` (``method``, ``foreground_threshold``,
            ``seed_threshold``, ``min_size``).
        rand_vi: also compute adapted Rand error and variation of information (ISBI-style data).

    The configured ``loss`` is built in binary mode and applied to each map channel on its own (so
    ``loss=`` sweeps compare the same thing for every map); the class maps, when there are any,
    use the same loss in multiclass mode (cross-entropy if the loss is binary-only).
    """

    loss_mode = "binary"

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
        encoding: str = "core",
        core_fraction: float = 0.5,
        boundary_width: int = 1,
        channel_weights: Mapping[str, float] | None = None,
        postprocess: Mapping | None = None,
        rand_vi: bool = False,
        predictor: Predictor | None = None,
    ):
        if encoding not in CHANNELS:
            raise ValueError(f"task.encoding={encoding!r} is not one of {list(CHANNELS)}")
        super().__init__(
            model, loss, optimizer, class_names, in_channels, ignore_index, scheduler, run_config,
            predictor=predictor,
        )
        self._post_seconds = 0.0
        self._epoch_started = 0.0

    # -- what differs from the semantic tasks ------------------------------------------------------
    def check_classes(self) -> None:
        if len(self.class_names) < 2:
            raise ValueError(
                f"task=instance needs background + object classes, the data has {self.class_names}"
            )

    @property
    def num_classes(self) -> int:
        """Object classes the net tells apart (1 = class-agnostic instances)."""
        return len(self.class_names) - 1

    @property
    def map_names(self) -> tuple[str, ...]:
        return CHANNELS[self.hparams.encoding]

    @property
    def num_outputs(self) -> int:
        return len(self.map_names) + (self.num_classes if self.num_classes > 1 else 0)

    def logits_to_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The object maps through sigmoids, the class maps (if any) through a softmax."""
        maps = len(self.map_names)
        return torch.cat([torch.sigmoid(logits[:, :maps]), logits[:, maps:].softmax(1)], 1)

    def configure_losses(self) -> None:
        loss, ignore = self.hparams.loss, self.hparams.ignore_index
        self.criterion = build_loss(instantiate(loss), mode="binary", ignore_index=ignore)
        self.class_criterion = None
        if self.num_classes > 1:
            try:
                self.class_criterion = build_loss(
                    instantiate(loss), mode="multiclass", ignore_index=ignore
                )
            except ValueError as err:
                # A binary-only loss (bce, bce_dice): the class maps use ce_dice, the semantic
                # task's default. Cross-entropy alone sat at chance (ln C) for 60 epochs on the
                # synthetic shapes; the Dice term weighs every class equally (docs/benchmarks.md).
                rank_zero_warn(f"class maps use ce_dice: {err}")
                self.class_criterion = build_loss(
                    loss_configs()["ce_dice"], mode="multiclass", ignore_index=ignore
                )
        weights = {name: 1.0 for name in (*self.map_names, "classes")}
        weights.update(self.hparams.channel_weights or {})
        self.channel_weights = weights

    def configure_metrics(self) -> None:
        self.metrics = nn.ModuleDict(
            {
                s: instance_metrics(rand_vi=self.hparams.rand_vi).clone(prefix=f"{s}/")
                for s in EVAL_STAGES
            }
        )

    # -- steps --------------------------------------------------------------------------------
    def compute_loss(
        self, logits: torch.Tensor, batch: dict
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sum over maps of the configured loss; targets encoded here from the instances."""
        if "instances" not in batch:
            raise ValueError(
                "task=instance needs data with instance labels (no 'instances' in the batch)"
            )
        mask, hp = batch["mask"], self.hparams
        targets = encode(batch["instances"], hp.encoding, hp.core_fraction, hp.boundary_width)
        ignored = mask == hp.ignore_index
        terms = {}
        for k, name in enumerate(self.map_names):
            target = targets[:, k].masked_fill(ignored, float(hp.ignore_index))
            terms[name] = self.criterion(logits[:, k : k + 1], target)
        if self.class_criterion is not None:
            # Object classes 1..C -> channels 0..C-1; background joins the ignored pixels.
            classes = torch.where((mask == 0) | ignored, hp.ignore_index, mask - 1)
            class_logits = logits[:, len(self.map_names) :]
            if (classes != hp.ignore_index).any():
                terms["classes"] = self.class_criterion(class_logits, classes)
            else:  # a crop without objects: nothing to classify (a mean over no pixels is NaN)
                terms["classes"] = class_logits.sum() * 0.0
        total = sum(self.channel_weights[name] * value for name, value in terms.items())
        return total, terms

    def shared_step(self, batch: dict, stage: str) -> dict:
        valid = batch["mask"] != self.hparams.ignore_index
        if stage != "train" and not self.predictor.plain:
            # Averaged maps have no logits to take a loss of: metrics only.
            prediction = self.predict(batch["image"], valid)
            started = time.perf_counter()
            instances = self.evaluate(prediction.instances, batch, stage)
            self._post_seconds += time.perf_counter() - started
            return {"preds": prediction.labels, "instances": instances}
        logits = self(batch["image"])
        loss, terms = self.compute_loss(logits, batch)
        size = batch["image"].shape[0]
        if stage == "train":
            return self.train_step_output(loss, terms, size)
        self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=size, sync_dist=True)
        for name, value in terms.items():
            self.log(f"{stage}/loss/{name}", value, on_epoch=True, batch_size=size, sync_dist=True)
        started = time.perf_counter()
        prediction = self.postprocess(self.logits_to_probs(logits), valid)
        instances = self.evaluate(prediction.instances, batch, stage)
        self._post_seconds += time.perf_counter() - started
        return {"loss": loss, "preds": prediction.labels, "instances": instances}

    def postprocess(self, probs: torch.Tensor, valid: torch.Tensor | None = None) -> Prediction:
        """Maps ``(N, K, H, W)`` (``logits_to_probs``) -> objects split by ``split_objects``
        (``task.postprocess`` options), one ``Instances`` per image; ``valid`` (N, H, W) marks
        the pixels objects may cover (ignored pixels left out)."""
        maps = probs[:, : len(self.map_names)].float()
        if valid is not None:
            maps = maps * valid[:, None]
        maps = maps.detach().cpu().numpy()
        classes = probs[:, len(self.map_names) :].float().detach().cpu().numpy()
        options = dict(self.hparams.postprocess or {})
        found = []
        for i, (foreground, separator) in enumerate(maps):
            labels = split_objects(foreground, separator, self.hparams.encoding, **options)
            found.append(describe(labels, foreground, classes[i] if self.num_classes > 1 else None))
        return Prediction.from_instances(found, probs)

    def evaluate(self, preds: list[Instances], batch: dict, stage: str) -> torch.Tensor:
        """Update the stage's metrics; returns the predicted label images ``(N, H, W)``."""
        ignore = self.hparams.ignore_index
        masks = batch["mask"].cpu().numpy()
        targets = [
            from_labels(t, m if self.num_classes > 1 else None, ignore)
            for t, m in zip(batch["instances"].cpu().numpy(), masks, strict=True)
        ]
        self.metrics[stage].update(preds, targets, keys=batch["name"])
        return torch.from_numpy(np.stack([p.labels for p in preds])).to(batch["instances"].device)

    # -- epoch ends: metrics and the post-processing time ------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._post_seconds, self._epoch_started = 0.0, time.perf_counter()

    on_test_epoch_start = on_validation_epoch_start

    def log_epoch_metrics(self, stage: str) -> None:
        started = time.perf_counter()
        values = self.metrics[stage].compute()
        self.metrics[stage].reset()
        post = self._post_seconds + time.perf_counter() - started
        self.log(f"{stage}/ap50", values.pop(f"{stage}/ap50"), prog_bar=True)
        self.log_dict({k: v.float() for k, v in values.items()})
        # Post-processing + metric time, in seconds per epoch of this stage, and its share of it.
        key = "time/postprocess" if stage == "val" else f"time/{stage}_postprocess"
        self.log(key, post)
        self.log(f"{key}_fraction", post / max(time.perf_counter() - self._epoch_started, 1e-9))
