"""Top-down instance segmentation: torchvision Mask R-CNN trained with its own losses.

``model=maskrcnn`` / ``model=maskrcnn_light`` (``conf/model/``) select this task and build its
network (``segsweep.models.maskrcnn``); scoring (label image + class + score per instance, the same
metrics, overlays and timings) is ``InstanceTask``'s, shared with the bottom-up task.
"""

from __future__ import annotations

import torch

from segsweep.inference import Prediction, Predictor
from segsweep.instance.postprocess import paste_masks
from segsweep.models.maskrcnn import build_maskrcnn  # noqa: F401  (model._target_ of checkpoints before 2026-12)
from segsweep.tasks.instance_base import InstanceTask


class MaskRCNNTask(InstanceTask):
    """Mask R-CNN on the instance task's data, metrics and outputs. ``loss=`` does not apply
    (Mask R-CNN trains with its own RPN, box and mask losses, logged as ``train/loss/<term>``);
    predictions are whole images (no TTA or tiling).

    Args: the base task's, and ``rand_vi`` (as ``InstanceSegmentationTask``). ``**bottom_up``:
    the bottom-up settings ``task=instance`` passes (``encoding``, ``postprocess``, ...), which do
    not apply here; kept in the hyperparameters as before.
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
        rand_vi: bool = False,
        predictor: Predictor | None = None,
        **bottom_up,
    ):
        super().__init__(
            model, loss, optimizer, class_names, in_channels, ignore_index, scheduler, run_config,
            predictor=predictor,
        )

    @property
    def num_outputs(self) -> int:
        return len(self.class_names)  # torchvision counts the background as a class

    def forward(self, images: torch.Tensor) -> list[dict]:
        """The network's output: torchvision's detections (boxes, labels, scores, masks) per image."""
        return self.net(list(images))

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The sum of Mask R-CNN's losses (``classifier``, ``box_reg``, ``mask``, ``objectness``,
        ``rpn_box_reg``), each a term."""
        terms = self.net(list(batch["image"]), self.detection_targets(batch))
        return sum(terms.values()), {name.removeprefix("loss_"): value for name, value in terms.items()}

    def evaluation_loss(self, detections: list[dict], batch: dict) -> None:
        """None: in eval mode torchvision returns detections, not losses (no ``val/loss``)."""
        return None

    def detection_targets(self, batch: dict) -> list[dict]:
        """torchvision targets (boxes, labels, masks) from the batch's true objects."""
        device = batch["image"].device
        out = []
        for true in self.true_instances(batch):
            ids = torch.arange(1, len(true.classes) + 1)
            masks = torch.from_numpy(true.labels)[None] == ids[:, None, None]
            rows, cols = masks.any(2), masks.any(1)
            boxes = [
                [c.nonzero().min(), r.nonzero().min(), c.nonzero().max() + 1, r.nonzero().max() + 1]
                for r, c in zip(rows, cols, strict=True)
            ]
            out.append({
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4).to(device),
                "labels": torch.from_numpy(true.classes).to(device),
                "masks": masks.to(torch.uint8).to(device),
            })
        return out

    def postprocess(self, detections: list[dict], valid: torch.Tensor | None = None) -> Prediction:
        """Detections -> one ``Instances`` per image, pasted by score (no per-pixel maps)."""
        found = []
        for i, det in enumerate(detections):
            masks = det["masks"] if valid is None else det["masks"] * valid[i].to(det["masks"].dtype)
            found.append(paste_masks(masks, det["scores"], det["labels"], score_threshold=self.net.score_threshold))
        device = detections[0]["masks"].device if detections else None
        return Prediction.from_instances(found, device=device)
