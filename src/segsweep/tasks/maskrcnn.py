"""Top-down instance segmentation: torchvision Mask R-CNN with its own losses.

``model=maskrcnn`` (``conf/model/maskrcnn.yaml``) selects this task and its network; the
evaluation (label image + class + score per instance, the same metrics, overlays and timings) is
``InstanceSegmentationTask``'s, so both families are scored by the same code.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from segsweep.inference import Prediction
from segsweep.instance.postprocess import from_labels, paste_masks
from segsweep.tasks.instance import InstanceSegmentationTask

RESNETS = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "wide_resnet101_2",
]


class _KeepSize(GeneralizedRCNNTransform):
    """torchvision's transform without its resize: segsweep's data is already sized and
    normalised by the ``augment`` pipeline; resizing to 800 px would cost CPU time for nothing."""

    def resize(self, image, target=None):
        return image, target


def _load_weights(net: MaskRCNN, path: str | Path) -> None:
    """Load a local state dict (a whole Mask R-CNN's, or a ResNet's into the backbone body),
    skipping tensors whose shapes differ (class heads, first conv of grey inputs)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Mask R-CNN weights file not found: {path} (config key model.weights_path)"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    state = {k.removeprefix("net.").removeprefix("module."): v for k, v in state.items()}
    target = net if any(k.startswith("backbone.") for k in state) else net.backbone.body
    own = target.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"no tensor of {path} fits the Mask R-CNN (keys like {list(state)[:3]})")
    skipped = sorted(set(state) - set(usable))
    if skipped:
        rank_zero_warn(
            f"{path}: {len(skipped)} tensors not loaded (shape or name differs), e.g. {skipped[:5]}"
        )
    target.load_state_dict(usable, strict=False)


def build_maskrcnn(
    in_channels: int,
    classes: int,
    backbone: str = "resnet18",
    weights_path: str | None = None,
    anchor_sizes: tuple[int, ...] = (8, 16, 32, 64, 128),
    score_threshold: float = 0.5,
    detections_per_image: int = 300,
    min_score: float = 0.05,
    **kwargs,
) -> MaskRCNN:
    """A torchvision Mask R-CNN on a ResNet-FPN backbone, randomly initialised or from a file.

    Args:
        in_channels: input channels (from the data); other than 3 replaces the first conv.
        classes: classes including background (from the data).
        backbone: torchvision ResNet name (``resnet18`` ... ``resnet152``, ``resnext50_32x4d``);
            the config takes it from ``encoder.name``.
        weights_path: a local state dict: a whole Mask R-CNN's (e.g. torchvision's COCO weights,
            saved) or an ImageNet ResNet's; never downloaded.
        anchor_sizes: one anchor size in pixels per FPN level (5 levels); small for nuclei.
        score_threshold: display threshold: detections scoring at least this are pasted into the
            label image (overlays, predictions, AJI/PQ/F1); mask AP ranks all detections.
        detections_per_image: at most this many detections per image.
        min_score: detections scored below this are dropped before AP (torchvision's default
            0.05, as in its COCO evaluation: AP needs the low-score end of the ranking).
        **kwargs: other ``torchvision.models.detection.MaskRCNN`` arguments.
    """
    if backbone not in RESNETS:
        raise ValueError(
            f"model=maskrcnn takes a ResNet backbone (encoder=...): {backbone!r} "
            f"is not one of {RESNETS}"
        )
    body = resnet_fpn_backbone(
        backbone_name=backbone, weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5
    )
    if in_channels != 3:
        old = body.body.conv1
        body.body.conv1 = nn.Conv2d(
            in_channels, old.out_channels, 7, stride=2, padding=3, bias=False
        )
    anchors = AnchorGenerator(
        tuple((int(s),) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * len(anchor_sizes)
    )
    net = MaskRCNN(
        body,
        num_classes=classes,
        rpn_anchor_generator=anchors,
        box_score_thresh=min_score,
        box_detections_per_img=detections_per_image,
        **kwargs,
    )
    net.transform = _KeepSize(
        min_size=1, max_size=1 << 20, image_mean=[0.0] * in_channels, image_std=[1.0] * in_channels
    )
    if weights_path:
        _load_weights(net, weights_path)
    net.output_stride = 32
    net.score_threshold = score_threshold
    return net


class MaskRCNNTask(InstanceSegmentationTask):
    """Mask R-CNN on the instance task's data, metrics and outputs. ``loss=`` does not apply
    (Mask R-CNN trains with its own RPN, box and mask losses, logged as ``train/loss/<term>``);
    the bottom-up settings of ``conf/task/instance.yaml`` (encoding, postprocess) are unused."""

    per_pixel_maps = False  # detections, not maps: no TTA or tiling

    @property
    def num_outputs(self) -> int:
        return len(self.class_names)  # torchvision counts the background as a class

    def configure_losses(self) -> None:
        self.criterion = self.class_criterion = None

    def forward(self, images: torch.Tensor) -> list[dict]:
        """The network's output: torchvision's detections (boxes, labels, scores, masks) per image."""
        return self.net(list(images))

    def predict(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> Prediction:
        return self.postprocess(self(images), valid)

    def logits_to_probs(self, logits):
        raise TypeError("MaskRCNNTask gives detections, not per-pixel maps: use predict() / postprocess()")

    def _targets(self, batch: dict) -> list[dict]:
        """torchvision targets (boxes, labels, masks) from the label images."""
        multi = self.num_classes > 1
        out = []
        for labels, semantic in zip(
            batch["instances"].cpu().numpy(), batch["mask"].cpu().numpy(), strict=True
        ):
            true = from_labels(labels, semantic if multi else None, self.hparams.ignore_index)
            ids = torch.arange(1, len(true.classes) + 1)
            masks = torch.from_numpy(true.labels)[None] == ids[:, None, None]
            rows, cols = masks.any(2), masks.any(1)
            boxes = [
                [c.nonzero().min(), r.nonzero().min(), c.nonzero().max() + 1, r.nonzero().max() + 1]
                for r, c in zip(rows, cols, strict=True)
            ]
            device = batch["image"].device
            out.append(
                {
                    "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4).to(device),
                    "labels": torch.from_numpy(true.classes).to(device),
                    "masks": masks.to(torch.uint8).to(device),
                }
            )
        return out

    def shared_step(self, batch: dict, stage: str) -> dict:
        if "instances" not in batch:
            raise ValueError("model=maskrcnn needs instance labels: use it with task=instance")
        size = batch["image"].shape[0]
        if stage == "train":
            terms = self.net(list(batch["image"]), self._targets(batch))
            loss = sum(terms.values())
            return self.train_step_output(loss, {k.removeprefix("loss_"): v for k, v in terms.items()}, size)
        # In eval mode torchvision returns detections, not losses: no val/loss for Mask R-CNN.
        detections = self(batch["image"])
        started = time.perf_counter()
        prediction = self.postprocess(detections, valid=batch["mask"] != self.hparams.ignore_index)
        instances = self.evaluate(prediction.instances, batch, stage)
        self._post_seconds += time.perf_counter() - started
        return {"loss": None, "preds": prediction.labels, "instances": instances}

    def postprocess(self, detections: list[dict], valid: torch.Tensor | None = None) -> Prediction:
        """Detections -> one ``Instances`` per image, pasted by score (no per-pixel maps)."""
        found = []
        for i, det in enumerate(detections):
            masks = (
                det["masks"] if valid is None else det["masks"] * valid[i].to(det["masks"].dtype)
            )
            found.append(paste_masks(masks, det["scores"], det["labels"], score_threshold=self.net.score_threshold))
        device = detections[0]["masks"].device if detections else None
        return Prediction.from_instances(found, device=device)

    def configure_models(self) -> None:
        factory = instantiate(self.hparams.model)
        self.net = factory(in_channels=self.hparams.in_channels, classes=self.num_outputs)
        self.output_stride = self.min_input_size = 32
