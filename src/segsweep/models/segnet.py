"""SegNet (Badrinarayanan et al. 2017): the decoder unpools with the encoder's max-pool indices."""

from __future__ import annotations

import torch
from torch import nn

from .classic_unet import conv_block


class SegNet(nn.Module):
    """SegNet: a VGG-style encoder whose max-pooling indices are kept and reused by the decoder's
    ``MaxUnpool2d``, placing each value back where its maximum was (no skip features, no learned
    upsampling); the convs after each unpooling densify the sparse maps.

    Args:
        in_channels: input image channels (filled in by the task).
        classes: output channels / logits (filled in by the task).
        depth: number of 2x poolings; H and W must be multiples of ``2**depth``.
        base_width: channels of the first level (64 in the paper), doubled at every level.
        convs_per_level: 3x3 convs per encoder / decoder level (2 or 3 in the paper's VGG16).
        batch_norm: BatchNorm after every conv (as in the paper).
    """

    def __init__(
        self,
        in_channels: int,
        classes: int,
        depth: int = 4,
        base_width: int = 64,
        convs_per_level: int = 2,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if depth < 1 or convs_per_level < 1:
            raise ValueError(
                f"depth and convs_per_level must be >= 1, got {depth}, {convs_per_level}"
            )
        widths = [base_width * 2**i for i in range(depth)]
        self.output_stride = 2**depth
        self.min_input_size = self.output_stride

        in_widths = [in_channels, *widths[:-1]]
        self.encoder = nn.ModuleList(
            conv_block(in_widths[i], widths[i], convs_per_level, batch_norm) for i in range(depth)
        )
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, stride=2)
        # mirror of the encoder: decoder[i] runs at level i and ends with the width of level i-1
        self.decoder = nn.ModuleList(
            nn.Sequential(
                conv_block(widths[i], widths[i], convs_per_level - 1, batch_norm),
                conv_block(widths[i], widths[max(i - 1, 0)], 1, batch_norm),
            )
            for i in range(depth)
        )
        self.head = nn.Conv2d(widths[0], classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices, sizes = [], []
        for block in self.encoder:
            x = block(x)
            sizes.append(x.shape[-2:])
            x, idx = self.pool(x)
            indices.append(idx)
        for level in reversed(range(len(self.decoder))):
            x = self.unpool(x, indices[level], output_size=sizes[level])
            x = self.decoder[level](x)
        return self.head(x)
