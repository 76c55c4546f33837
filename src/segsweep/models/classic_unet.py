"""The original U-Net (Ronneberger et al. 2015) with 'same' padding, so output size = input size."""

from __future__ import annotations

import torch
from torch import nn

DOWNSAMPLE = ("maxpool", "conv")
UPSAMPLE = ("nearest", "bilinear", "transposed")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a ValueError listing ``choices`` when ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(choices)}")


def conv_block(in_ch: int, out_ch: int, n_convs: int, batch_norm: bool) -> nn.Sequential:
    """``n_convs`` x (3x3 conv, [BN], ReLU); the first conv maps ``in_ch`` to ``out_ch``."""
    layers: list[nn.Module] = []
    for i in range(n_convs):
        # no conv bias before BN: BN's shift makes it redundant
        layers.append(
            nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1, bias=not batch_norm)
        )
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _down(kind: str, ch: int, batch_norm: bool) -> nn.Module:
    if kind == "maxpool":
        return nn.MaxPool2d(2)
    # a learned stride-2 3x3 conv (channels kept: the next level's convs double them)
    layers: list[nn.Module] = [nn.Conv2d(ch, ch, 3, stride=2, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(ch))
    return nn.Sequential(*layers, nn.ReLU(inplace=True))


def _up(kind: str, in_ch: int, out_ch: int) -> nn.Module:
    if kind == "transposed":  # the paper's 2x2 "up-convolution"
        return nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2)
    # interpolate, then a 1x1 conv halves the channels as the up-convolution would
    align = False if kind == "bilinear" else None
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode=kind, align_corners=align), nn.Conv2d(in_ch, out_ch, 1)
    )


class ClassicUNet(nn.Module):
    """Ronneberger et al.'s U-Net: two 3x3 convs per level, widths doubling with depth, skip
    connections by concatenation; 'same' padding keeps the output the size of the input.

    Args:
        in_channels: input image channels (filled in by the task).
        classes: output channels / logits (filled in by the task).
        depth: number of 2x downsamplings; H and W must be multiples of ``2**depth``.
        base_width: channels of the first level (64 in the paper), doubled at every level.
        downsample: ``"maxpool"`` (paper) or ``"conv"`` (learned stride-2 3x3 conv).
        upsample: ``"transposed"`` (paper's 2x2 up-convolution), ``"nearest"`` or ``"bilinear"``
            (interpolation followed by a 1x1 conv that halves the channels).
        batch_norm: BatchNorm after every conv (the paper had none).
    """

    def __init__(
        self,
        in_channels: int,
        classes: int,
        depth: int = 4,
        base_width: int = 64,
        downsample: str = "maxpool",
        upsample: str = "transposed",
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        check_choice("downsample", downsample, DOWNSAMPLE)
        check_choice("upsample", upsample, UPSAMPLE)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.output_stride = 2**depth
        self.min_input_size = self.output_stride

        in_widths = [in_channels, *widths[:-1]]
        self.encoder = nn.ModuleList(
            conv_block(in_widths[i], widths[i], 2, batch_norm) for i in range(depth + 1)
        )
        self.downs = nn.ModuleList(_down(downsample, widths[i], batch_norm) for i in range(depth))
        self.ups = nn.ModuleList(_up(upsample, widths[i + 1], widths[i]) for i in range(depth))
        # after concatenation with the skip: 2 * widths[i] channels in, widths[i] out
        self.decoder = nn.ModuleList(
            conv_block(2 * widths[i], widths[i], 2, batch_norm) for i in range(depth)
        )
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.encoder):
            if level > 0:
                x = self.downs[level - 1](x)
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself
        for level in reversed(range(len(self.ups))):
            x = self.ups[level](x)
            x = self.decoder[level](torch.cat([skips[level], x], dim=1))
        return self.head(x)
