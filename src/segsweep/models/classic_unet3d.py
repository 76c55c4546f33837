"""The classic U-Net in 3D (Çiçek et al. 2016, "3D U-Net"): the 2D ``ClassicUNet`` with Conv3d,
and anisotropic pooling for stacks with few, thick slices (EM, many MRI/CT series)."""

from __future__ import annotations

from torch import nn

from segsweep.models.classic_unet import DOWNSAMPLE, ClassicUNet, check_choice

UPSAMPLE = ("nearest", "trilinear", "transposed")


def conv_block3d(in_ch: int, out_ch: int, n_convs: int, batch_norm: bool) -> nn.Sequential:
    """``n_convs`` x (3x3x3 conv, [BN], ReLU); the first conv maps ``in_ch`` to ``out_ch``."""
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers.append(nn.Conv3d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm3d(out_ch))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _down(kind: str, ch: int, factor: tuple[int, int, int], batch_norm: bool) -> nn.Module:
    if kind == "maxpool":
        return nn.MaxPool3d(factor)
    # a learned strided 3x3x3 conv (channels kept: the next level's convs double them)
    layers: list[nn.Module] = [nn.Conv3d(ch, ch, 3, stride=factor, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm3d(ch))
    return nn.Sequential(*layers, nn.ReLU(inplace=True))


def _up(kind: str, in_ch: int, out_ch: int, factor: tuple[int, int, int]) -> nn.Module:
    if kind == "transposed":
        return nn.ConvTranspose3d(in_ch, out_ch, factor, stride=factor)
    align = False if kind == "trilinear" else None
    return nn.Sequential(nn.Upsample(scale_factor=factor, mode=kind, align_corners=align),
                         nn.Conv3d(in_ch, out_ch, 1))


class ClassicUNet3D(ClassicUNet):
    """3D U-Net: two 3x3x3 convs per level, widths doubling with depth, skips by concatenation,
    'same' padding: logits ``(N, classes, D, H, W)`` for input ``(N, C, D, H, W)``.

    Args:
        in_channels / classes: filled in by the task.
        depth: number of 2x downsamplings in-plane (H, W).
        base_width: channels of the first level, doubled at every level.
        downsample: ``"maxpool"`` or ``"conv"`` (learned strided conv), as the 2D U-Net.
        upsample: ``"transposed"``, ``"nearest"`` or ``"trilinear"`` (+ 1x1x1 conv).
        batch_norm: BatchNorm after every conv.
        pool_z_levels: the first ``k`` levels halve z too, deeper ones pool in-plane only
            (``None``: every level, isotropic). Stacks of thick slices (ISBI: 50 nm z vs 4 nm
            in-plane) keep their few slices instead of pooling them away.

    ``output_stride`` is per axis ``(z, y, x)``: the task pads every volume to it and crops back.
    The 2D U-Net's ``forward`` (encoder, skips, decoder) runs unchanged on these 3D layers.
    """

    def __init__(self, in_channels: int, classes: int, depth: int = 3, base_width: int = 8,
                 downsample: str = "maxpool", upsample: str = "transposed", batch_norm: bool = True,
                 pool_z_levels: int | None = None) -> None:
        nn.Module.__init__(self)  # the layers are built here, in 3D, not by the 2D __init__
        check_choice("downsample", downsample, DOWNSAMPLE)
        check_choice("upsample", upsample, UPSAMPLE)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        z_levels = depth if pool_z_levels is None else pool_z_levels
        if not 0 <= z_levels <= depth:
            raise ValueError(f"pool_z_levels={pool_z_levels} must be in 0..depth={depth} or null")
        factors = [(2 if level < z_levels else 1, 2, 2) for level in range(depth)]
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.output_stride = (2**z_levels, 2**depth, 2**depth)
        self.min_input_size = self.output_stride

        in_widths = [in_channels, *widths[:-1]]
        self.encoder = nn.ModuleList(conv_block3d(in_widths[i], widths[i], 2, batch_norm) for i in range(depth + 1))
        self.downs = nn.ModuleList(_down(downsample, widths[i], factors[i], batch_norm) for i in range(depth))
        self.ups = nn.ModuleList(_up(upsample, widths[i + 1], widths[i], factors[i]) for i in range(depth))
        self.decoder = nn.ModuleList(conv_block3d(2 * widths[i], widths[i], 2, batch_norm) for i in range(depth))
        self.head = nn.Conv3d(widths[0], classes, 1)
