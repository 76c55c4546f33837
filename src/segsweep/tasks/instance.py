"""Bottom-up instance segmentation over any smp architecture: per-pixel maps, then watershed.

The net predicts a foreground map and a map that separates touching objects (``task.encoding``,
see ``segsweep.instance.encoding``), plus one channel per class when the data has more than one
object class. The class maps are trained on object pixels only (the foreground map already says
object or background) with a loss that weighs classes equally; see ``configure_losses``.
Targets are made from ``batch["instances"]`` in the step, on the batch's device.
Validation and test split the maps into objects (``segsweep.instance.postprocess``); scoring is
``InstanceTask``'s, shared with ``MaskRCNNTask`` (top-down).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_warn

from segsweep.inference import Prediction, Predictor
from segsweep.instance.encoding import CHANNELS, encode
from segsweep.instance.postprocess import describe, split_batch
from segsweep.losses import build_loss, loss_configs
from segsweep.tasks.instance_base import InstanceTask
from segsweep.tasks.per_pixel import PerPixelTask


class InstanceSegmentationTask(InstanceTask, PerPixelTask):
    """``task=instance``: bottom-up instances from any ``model=`` / ``encoder=`` / ``loss=``.

    Args (besides the base task's):
        encoding: target maps, ``core`` (default), ``distance`` or ``boundary``.
        core_fraction: ``core``: the share of an object's depth its core starts at.
        boundary_width: ``boundary``: border ring width in pixels.
        channel_weights: loss weight of each map (foreground, separator) and of the class maps.
        postprocess: keyword arguments of ``split_objects`` (``method``, ``foreground_threshold``,
            ``seed_threshold``, ``min_size``), and ``workers``: the images of a batch split on
            that many threads (``split_batch``; 1 or null = one after the other, in the step's
            thread; the same objects either way).
        rand_vi: also compute adapted Rand error and variation of information (ISBI-style data).

    The configured ``loss`` is built in binary mode and applied to each map channel on its own (so
    ``loss=`` sweeps compare the same thing for every map); the class maps, when there are any,
    use the same loss in multiclass mode (cross-entropy if the loss is binary-only).
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

    # -- the maps the network predicts ---------------------------------------------------------------
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

    # -- steps --------------------------------------------------------------------------------
    def compute_loss(
        self, logits: torch.Tensor, batch: dict
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sum over maps of the configured loss; targets encoded here from the instances."""
        mask, hp = batch["mask"], self.hparams
        targets = encode(self.instance_labels(batch), hp.encoding, hp.core_fraction, hp.boundary_width)
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
        workers = options.pop("workers", None) or 1
        labels = split_batch(maps[:, 0], maps[:, 1], self.hparams.encoding, workers=workers, **options)
        found = [
            describe(objects, maps[i, 0], classes[i] if self.num_classes > 1 else None)
            for i, objects in enumerate(labels)
        ]
        return Prediction.from_instances(found, probs)
