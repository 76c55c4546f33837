"""Receptive field: measured by gradients vs hand-computed and formula values, on tiny nets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segsweep.receptive_field import (
    empirical_receptive_field,
    main,
    theoretical_receptive_field,
)


def conv_stack(n: int, channels: int = 4) -> nn.Sequential:
    """``n`` x (3x3 conv, stride 1, padding 1, ReLU): receptive field 1 + 2n."""
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(1 if i == 0 else channels, channels, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers)


class TinyUNet(nn.Module):
    """conv -> [maxpool -> conv -> nearest x2] concatenated with the skip -> conv."""

    def __init__(self):
        super().__init__()
        self.enc, self.pool = nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2)
        self.mid, self.dec = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(8, 2, 3, padding=1)

    def forward(self, x):
        skip = F.relu(self.enc(x))
        deep = F.interpolate(F.relu(self.mid(self.pool(skip))), scale_factor=2, mode="nearest")
        return self.dec(torch.cat([skip, deep], dim=1))


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)  # (one torch thread per test process: conftest.py)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_stacked_convs(n):
    model = conv_stack(n)
    result = empirical_receptive_field(model, 1, size=32)
    assert (result["height"], result["width"]) == (1 + 2 * n, 1 + 2 * n)
    assert theoretical_receptive_field(model) == 1 + 2 * n
    assert result["grad"].shape == (32, 32) and not result["lower_bound"]


def test_conv_pool_conv_chain():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1)
    )
    # By hand (rf += (k - 1) * dilation * jump; jump *= stride), from rf = 1, jump = 1:
    # 3x3 conv: 1 + 2*1 = 3; 2x2 pool stride 2: 3 + 1*1 = 4, jump 2; 3x3 conv: 4 + 2*2 = 8.
    assert theoretical_receptive_field(model) == 8
    result = empirical_receptive_field(model, 1, size=32)
    assert (result["height"], result["width"]) == (8, 8)


def test_training_mode_restored_and_bn_untouched():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    model.train()
    stats = model[1].running_mean.clone()
    result = empirical_receptive_field(model, 1, size=16)
    assert result["height"] == 3 and model.training
    assert torch.equal(model[1].running_mean, stats)  # eval mode: BN statistics unchanged


def test_unet_like_skip_connection():
    model = TinyUNet()
    # Not a chain: the layer order does not tell the data flow, so no formula.
    assert theoretical_receptive_field(model) is None
    # By hand: an output pixel's 3x3 decoder conv covers 3 fine pixels = 2 coarse ones after the
    # nearest x2; the coarse 3x3 conv widens that to 4 pooled pixels = 8 encoder-conv outputs;
    # the 3x3 encoder conv adds 1 on each side: 10. The skip path alone gives 5, inside it.
    result = empirical_receptive_field(model, 1, size=32)
    assert (result["height"], result["width"]) == (10, 10)


def test_not_a_chain_layers():
    assert theoretical_receptive_field(nn.Sequential(nn.Conv2d(1, 1, 3), nn.Upsample(2))) is None
    assert theoretical_receptive_field(nn.Conv2d(1, 1, (1, 3))) is None  # non-square field
    assert theoretical_receptive_field(nn.Conv2d(1, 1, 3, dilation=4)) == 9


def test_border_growth_retry():
    model = nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=1) for _ in range(8)])  # rf 17
    result = empirical_receptive_field(model, 1, size=8, max_size=64)
    assert result["sizes_tried"] == [8, 16, 32] and result["size"] == 32
    assert result["height"] == 17 and not result["lower_bound"]
    with pytest.warns(UserWarning, match="at least"):
        capped = empirical_receptive_field(model, 1, size=8, max_size=16)
    assert capped["lower_bound"] and capped["height"] == 16  # the whole input: a lower bound


def test_cli_main(make_cfg, tmp_path, capsys):
    cfg = make_cfg(
        "model=classic_unet", "model.depth=1", "model.base_width=4", "model.batch_norm=false",
        "+rf.size=16", "+rf.max_size=64", "+rf.samples=1",
    )
    result = main(cfg)  # hydra.main passes a given config straight through
    printed = capsys.readouterr().out
    assert "empirical receptive field" in printed and "n/a" in printed
    assert not result["lower_bound"] and result["height"] > 5
    assert (tmp_path / "receptive_field.png").stat().st_size > 0
