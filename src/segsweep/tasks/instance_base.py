"""What both instance families share: true objects from the batch, the instance metrics, the
epoch's values and the post-processing time.

A prediction is one ``Instances`` per image (label image + class + score per object), whether
bottom-up maps split by watershed (``InstanceSegmentationTask``) or Mask R-CNN detections
(``MaskRCNNTask``): both are scored here by the same code (``segsweep.instance.metrics``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from segsweep.callbacks.timing import PostprocessTime
from segsweep.inference import Prediction
from segsweep.instance.metrics import instance_metrics
from segsweep.instance.postprocess import Instances, from_labels
from segsweep.tasks.base import EVAL_STAGES, SegmentationTask


class InstanceTask(SegmentationTask):
    """Objects of ``class_names[1:]`` scored by mask AP, AJI, PQ, F1 (and with ``rand_vi``,
    adapted Rand error and VI): ``val/ap50`` is the metric checkpoints and sweeps optimise."""

    def check_classes(self) -> None:
        if len(self.class_names) < 2:
            raise ValueError(
                f"task=instance needs background + object classes, the data has {self.class_names}"
            )

    @property
    def num_classes(self) -> int:
        """Object classes the net tells apart (1 = class-agnostic instances)."""
        return len(self.class_names) - 1

    def configure_metrics(self) -> None:
        rand_vi = self.hparams.get("rand_vi", False)
        self.metrics = nn.ModuleDict(
            {s: instance_metrics(rand_vi=rand_vi).clone(prefix=f"{s}/") for s in EVAL_STAGES}
        )

    def configure_callbacks(self) -> list:
        """The post-processing time per epoch (``time/postprocess``, ``time/postprocess_fraction``;
        ``time/test_postprocess*``), whatever callbacks the run configures."""
        return [PostprocessTime()]

    def instance_labels(self, batch: dict) -> torch.Tensor:
        """The batch's label images ``(N, H, W)`` (0 = background, one id per object)."""
        if "instances" not in batch:
            raise ValueError(
                f"{type(self).__name__} needs data with instance labels (no 'instances' in the batch): "
                "use it with task=instance"
            )
        return batch["instances"]

    def true_instances(self, batch: dict) -> list[Instances]:
        """The batch's true objects, one ``Instances`` per image (classes from the mask when
        there are several object classes)."""
        ignore, several = self.hparams.ignore_index, self.num_classes > 1
        labels, masks = self.instance_labels(batch).cpu().numpy(), batch["mask"].cpu().numpy()
        return [from_labels(t, m if several else None, ignore) for t, m in zip(labels, masks, strict=True)]

    def score(self, prediction: Prediction, batch: dict, stage: str) -> dict:
        """Update the stage's metrics; the step's outputs: class labels and the predicted label
        images ``(N, H, W)`` (the overlays draw each object in its own colour)."""
        found = prediction.instances
        self.metrics[stage].update(found, self.true_instances(batch), keys=batch["name"])
        instances = torch.from_numpy(np.stack([p.labels for p in found])).to(batch["instances"].device)
        return {"preds": prediction.labels, "instances": instances}

    def log_epoch_metrics(self, stage: str) -> None:
        values = self.metrics[stage].compute()
        self.metrics[stage].reset()
        self.log(f"{stage}/ap50", values.pop(f"{stage}/ap50"), prog_bar=True)
        self.log_dict({k: v.float() for k, v in values.items()})
