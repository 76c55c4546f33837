"""Networks from config: any smp architecture, the classic U-Net, SegNet and torchvision's Mask R-CNN.

Every model maps ``(N, C, H, W)`` to logits ``(N, classes, H, W)`` and has an ``output_stride``
attribute: H and W must be multiples of it (the task pads to it), and ``min_input_size``.
``ClassicUNet3D`` maps volumes ``(N, C, D, H, W)``; its stride and minimum size are per axis.
``build_maskrcnn`` is the exception: a detector, trained with its own losses (``MaskRCNNTask``).
"""

from .classic_unet import ClassicUNet
from .classic_unet3d import ClassicUNet3D
from .maskrcnn import build_maskrcnn
from .segnet import SegNet
from .smp_factory import ARCHITECTURES, build_smp_model
from .weights import load_encoder_weights

__all__ = [
    "ARCHITECTURES", "ClassicUNet", "ClassicUNet3D", "SegNet", "build_maskrcnn", "build_smp_model",
    "load_encoder_weights",
]
