"""Networks from config: any smp architecture, the classic U-Net and SegNet.

Every model maps ``(N, C, H, W)`` to logits ``(N, classes, H, W)`` and has an ``output_stride``
attribute: H and W must be multiples of it (the task pads to it), and ``min_input_size``.
"""

from .classic_unet import ClassicUNet
from .segnet import SegNet
from .smp_factory import ARCHITECTURES, build_smp_model
from .weights import load_encoder_weights

__all__ = ["ARCHITECTURES", "ClassicUNet", "SegNet", "build_smp_model", "load_encoder_weights"]
