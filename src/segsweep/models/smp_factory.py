"""Any segmentation-models-pytorch architecture from config, with readable errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import timm
from omegaconf import DictConfig, ListConfig, OmegaConf
from segmentation_models_pytorch.encoders.mix_transformer import MixVisionTransformerEncoder
from torch import nn

from .weights import load_encoder_weights

ARCHITECTURES: list[str] = sorted(smp.MODEL_ARCHITECTURES_MAPPING)


def _check_arch(arch: str) -> None:
    if arch.lower() not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ValueError(
            f"Unknown smp architecture '{arch}' (config key model.arch). "
            f"Valid names: {', '.join(ARCHITECTURES)}"
        )


def _check_encoder(name: str) -> None:
    if name.startswith("tu-"):
        if not timm.is_model(name[3:]):
            raise ValueError(
                f"Unknown timm encoder '{name}' (config key encoder.name): timm has no model "
                f"'{name[3:]}'; see timm.list_models() for valid names."
            )
        return
    # deprecated "timm-regnet*" style names are not listed but smp maps them to "tu-" encoders
    legacy = getattr(smp.encoders, "is_equivalent_to_timm_universal", lambda _: False)
    if name in smp.encoders.get_encoder_names() or legacy(name):
        return
    hint = f" Did you mean 'tu-{name}'?" if timm.is_model(name) else ""
    raise ValueError(
        f"Unknown encoder '{name}' (config key encoder.name).{hint} Valid smp encoders: "
        f"{', '.join(smp.encoders.get_encoder_names())}. Any timm model works as an encoder "
        "with the 'tu-' prefix, e.g. 'tu-mobilenetv3_small_050'."
    )


def _output_stride(model: nn.Module) -> int:
    """The multiple that input H and W must be for ``model`` to return logits of the same size."""
    # smp's own input check (SegmentationModel.check_input_shape) uses the encoder's stride:
    # 2**encoder_depth, less when dilated (DeepLabV3, PAN), the patch size for ViTs.
    stride = int(model.encoder.output_stride)
    # DPT's decoder resamples the constant-stride ViT tokens to 1/4, 1/8, ..., 1/2**(n+1) of the
    # input (n = encoder depth) and adds them up, so H and W must divide by that deepest scale too.
    blocks = getattr(model.decoder, "reassemble_blocks", None)
    if blocks is not None:
        stride = math.lcm(stride, 2 ** (len(blocks) + 1))
    return stride


def _min_input_size(model: nn.Module, stride: int) -> int:
    """The smallest H and W the model can take (a multiple of ``stride``)."""
    size = stride
    # PAN's FPA block max-pools the deepest feature three times: it needs 8 pixels there.
    if hasattr(model.decoder, "fpa"):
        size = max(size, 8 * int(model.encoder.output_stride))
    # MiT (mit_b*) attention reduces keys with an 8x8 stride-8 conv on the 1/4 scale feature.
    if isinstance(model.encoder, MixVisionTransformerEncoder):
        size = max(size, 32)
    return math.lcm(size, stride)


def _plain(value: Any) -> Any:
    # Hydra passes lists/dicts as ListConfig/DictConfig; some smp checks want real lists/tuples.
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def build_smp_model(
    arch: str,
    in_channels: int,
    classes: int,
    encoder_name: str,
    encoder_weights: str | bool | None = None,
    weights_path: str | Path | None = None,
    **arch_kwargs: Any,
) -> nn.Module:
    """Build any smp architecture with one ``smp.create_model`` call.

    Args:
        arch: smp architecture name, case-insensitive (``smp.MODEL_ARCHITECTURES_MAPPING``).
        in_channels: input image channels (filled in by the task).
        classes: output channels / logits (filled in by the task).
        encoder_name: smp encoder name, or any timm model as ``"tu-<timm name>"``.
        encoder_weights: smp hub weights, e.g. ``"imagenet"`` (``True`` for ``tu-`` encoders);
            ``None`` is random init and downloads nothing.
        weights_path: a local ``.pth``/``.pt``/``.safetensors`` state dict for the encoder
            (see :func:`load_encoder_weights`); excludes ``encoder_weights``.
        **arch_kwargs: passed to the architecture, e.g. ``encoder_depth``, ``decoder_channels``;
            keys the architecture does not take go on to a ``tu-`` encoder's timm model.

    The returned model has ``output_stride`` (H and W must be multiples of it) and
    ``min_input_size`` (the smallest H and W it takes) attributes.
    """
    _check_arch(arch)
    _check_encoder(encoder_name)
    if encoder_weights is False:
        encoder_weights = None  # smp's tu- encoders treat anything but None as "pretrained"
    if encoder_weights is not None and weights_path is not None:
        raise ValueError(
            f"Set either encoder.weights (hub weights, got {encoder_weights!r}) or "
            f"encoder.weights_path (a local file, got {str(weights_path)!r}), not both."
        )
    try:
        model = smp.create_model(
            arch,
            encoder_name=encoder_name,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=classes,
            **{key: _plain(value) for key, value in arch_kwargs.items()},
        )
    except (ValueError, TypeError, AssertionError, RuntimeError) as err:
        hint = ""
        if "downsampling pattern" in str(err):  # smp's words for a constant-stride (ViT) encoder
            hint = " (a plain ViT-style encoder keeps one stride throughout: use it with arch dpt)"
        raise ValueError(
            f"smp cannot build architecture '{arch}' with encoder '{encoder_name}' "
            f"(unsupported combination or argument): {type(err).__name__}: {err}{hint}"
        ) from err
    if weights_path is not None:
        load_encoder_weights(model.encoder, weights_path)
    model.output_stride = _output_stride(model)
    model.min_input_size = _min_input_size(model, model.output_stride)
    return model
