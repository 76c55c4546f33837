"""torchvision's Mask R-CNN from config (``model=maskrcnn``, ``model=maskrcnn_light``).

A ResNet-FPN backbone named by ``encoder.name``, randomly initialised or from a local file (never
downloaded), with anchors, head sizes and sample counts as the config gives them. The defaults
build torchvision's own Mask R-CNN (``maskrcnn_resnet50_fpn``'s heads on any ResNet); the light
config trims it for small images on a CPU (``conf/model/maskrcnn_light.yaml``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from .weights import fitting, load_state, read_state_dict

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


def resnet_fpn(
    name: str, in_channels: int = 3, returned_layers: Sequence[int] = (1, 2, 3, 4), fpn_channels: int = 256
) -> BackboneWithFPN:
    """A randomly initialised, fully trainable ResNet (BatchNorm) under a feature pyramid over the
    stages ``returned_layers`` (1 = stride 4 ... 4 = stride 32), plus a max-pooled top level.

    With the defaults, the modules (and state dict keys) of torchvision's ``resnet_fpn_backbone``.
    """
    if name not in RESNETS:
        raise ValueError(
            f"model=maskrcnn takes a ResNet backbone (encoder=...): {name!r} is not one of {RESNETS}"
        )
    layers = sorted(int(k) for k in returned_layers)
    if not layers or layers[0] < 1 or layers[-1] > 4:
        raise ValueError(f"model.returned_layers={list(returned_layers)}: ResNet stages are 1..4")
    body = getattr(resnet, name)(weights=None, norm_layer=nn.BatchNorm2d)
    stage_channels = body.inplanes // 8  # layer1's output channels (64 for resnet18, 256 for resnet50)
    pyramid = BackboneWithFPN(
        body,
        return_layers={f"layer{k}": str(i) for i, k in enumerate(layers)},
        in_channels_list=[stage_channels * 2 ** (k - 1) for k in layers],
        out_channels=fpn_channels,
    )
    if in_channels != 3:  # grey or multi-channel data: a first conv of its own
        pyramid.body.conv1 = nn.Conv2d(in_channels, body.conv1.out_channels, 7, stride=2, padding=3, bias=False)
    return pyramid


def load_maskrcnn_weights(net: MaskRCNN, path: str | Path) -> None:
    """A local state dict into ``net``: a whole Mask R-CNN's (e.g. torchvision's COCO weights,
    saved once) or an ImageNet ResNet's into the backbone, whichever it fits better; tensors of
    other shapes (class heads, a grey first conv) are skipped with a warning."""
    state = read_state_dict(path, "encoder.weights_path")
    target = max((net, net.backbone.body), key=lambda module: len(fitting(state, module)[1]))
    load_state(target, state, path, name="Mask R-CNN", partial=True)


def build_maskrcnn(
    in_channels: int,
    classes: int,
    backbone: str = "resnet18",
    weights_path: str | None = None,
    anchor_sizes: Sequence[int] = (8, 16, 32, 64, 128),
    score_threshold: float = 0.5,
    detections_per_image: int = 300,
    min_score: float = 0.05,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    fpn_channels: int = 256,
    box_head_size: int = 1024,
    mask_head_channels: Sequence[int] = (256, 256, 256, 256),
    roi_sampling_ratio: int = 2,
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
        anchor_sizes: one anchor size in pixels per pyramid level (``returned_layers`` + the pooled
            top level: 5 by default); small for nuclei.
        score_threshold: display threshold: detections scoring at least this are pasted into the
            label image (overlays, predictions, AJI/PQ/F1); mask AP ranks all detections.
        detections_per_image: at most this many detections per image.
        min_score: detections scored below this are dropped before AP (torchvision's default
            0.05, as in its COCO evaluation: AP needs the low-score end of the ranking).
        returned_layers: ResNet stages under the pyramid (1..4, strides 4..32); stages after the
            last are not built.
        fpn_channels: channels of every pyramid level (and of what the heads pool from it).
        box_head_size: width of the two-layer box head.
        mask_head_channels: one 3x3 conv of the mask head per entry.
        roi_sampling_ratio: RoIAlign samples per bin and axis for the box (7x7) and mask (14x14)
            heads (torchvision: 2; 1 quarters the cost of RoIAlign's backward pass on a CPU).
        **kwargs: other ``torchvision.models.detection.MaskRCNN`` arguments (RPN and RoI sample
            counts, NMS thresholds, ...).
    """
    body = resnet_fpn(backbone, in_channels, returned_layers, fpn_channels)
    levels = len(returned_layers) + 1  # + the max-pooled top level
    if len(anchor_sizes) != levels:
        raise ValueError(f"model.anchor_sizes={list(anchor_sizes)} needs one size per pyramid level: {levels} "
                         f"(model.returned_layers={list(returned_layers)} + the pooled top level)")
    anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * levels)
    mask_channels = [int(c) for c in mask_head_channels]
    # The heads in the order torchvision's MaskRCNN makes its defaults, so a seed draws the same
    # initial weights as torchvision's own network.
    levels_pooled = [str(i) for i in range(len(returned_layers))]  # the RoI heads pool from these, not 'pool'
    mask_head = MaskRCNNHeads(fpn_channels, mask_channels, 1)
    mask_predictor = MaskRCNNPredictor(mask_channels[-1], mask_channels[-1], classes)
    rpn_head = RPNHead(fpn_channels, anchors.num_anchors_per_location()[0])
    box_head = TwoMLPHead(fpn_channels * 7 * 7, box_head_size)  # over 7x7 RoIAlign, as torchvision's
    net = MaskRCNN(
        body,
        num_classes=None,  # the predictors carry the classes
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        box_roi_pool=MultiScaleRoIAlign(levels_pooled, 7, roi_sampling_ratio),
        mask_roi_pool=MultiScaleRoIAlign(levels_pooled, 14, roi_sampling_ratio),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(box_head_size, classes),
        mask_head=mask_head,
        mask_predictor=mask_predictor,
        box_score_thresh=min_score,
        box_detections_per_img=detections_per_image,
        **kwargs,
    )
    net.transform = _KeepSize(
        min_size=1, max_size=1 << 20, image_mean=[0.0] * in_channels, image_std=[1.0] * in_channels
    )
    if weights_path:
        load_maskrcnn_weights(net, weights_path)
    net.output_stride = 32
    net.score_threshold = score_threshold
    return net
