"""SpeedUps (trainer=gpu / ddp): channels-last weights for 2D nets, channels-last-3d for 3D ones.

``net.to(memory_format=torch.channels_last)`` raised on the 3D U-Net's Conv3d weights, so
``trainer=gpu`` crashed every 3D model at setup. CPU: memory formats need no GPU.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from segsweep.callbacks.speed import SpeedUps

CONF = Path(__file__).resolve().parents[1] / "conf"


def model_from_config(name: str, **overrides) -> nn.Module:
    """conf/model/<name>.yaml with ``overrides``, completed as the task does (1 channel in, 2 classes)."""
    cfg = OmegaConf.load(CONF / "model" / f"{name}.yaml")
    cfg.update(overrides)
    return instantiate(cfg)(in_channels=1, classes=2)


def conv_weights(net: nn.Module, kind: type) -> list[torch.Tensor]:
    """Weights of ``kind`` convolutions whose layout the memory format decides: more than one input
    channel and a kernel bigger than 1 (a (k, 1, 3, 3) or 1x1 weight is contiguous in both)."""
    weights = [m.weight for m in net.modules() if isinstance(m, kind)]
    weights = [w for w in weights if w.shape[1] > 1 and w.shape[2:].numel() > 1]
    assert weights, f"no {kind.__name__} weight to check"
    return weights


def set_up(net: nn.Module) -> None:
    SpeedUps(channels_last=True, compile=False).setup(trainer=None, pl_module=SimpleNamespace(net=net), stage="fit")


@pytest.mark.parametrize("depth", [1, 2])
def test_the_3d_unet_gets_channels_last_3d_weights_and_still_trains(depth):
    net = model_from_config("classic_unet3d", base_width=2, depth=depth)
    set_up(net)
    for weight in conv_weights(net, nn.Conv3d):
        assert weight.is_contiguous(memory_format=torch.channels_last_3d)
        assert not weight.is_contiguous()  # converted, not merely ambiguous
    # and a training step runs on it, input in the same format
    volume = torch.randn(2, 1, 2**depth, 8, 8).contiguous(memory_format=torch.channels_last_3d)
    logits = net(volume)
    assert logits.shape == (2, 2, 2**depth, 8, 8)
    logits.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_a_2d_unet_gets_channels_last_weights():
    net = model_from_config("classic_unet", base_width=2, depth=2)
    set_up(net)
    for weight in conv_weights(net, nn.Conv2d):
        assert weight.is_contiguous(memory_format=torch.channels_last)
        assert not weight.is_contiguous()
    assert net(torch.randn(1, 1, 16, 16).contiguous(memory_format=torch.channels_last)).shape == (1, 2, 16, 16)


def test_a_net_mixing_2d_and_3d_layers_gets_each_in_its_own_format():
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Conv3d(2, 3, 3), nn.BatchNorm2d(3))
    set_up(net)
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last) and not net[0].weight.is_contiguous()
    assert net[1].weight.is_contiguous(memory_format=torch.channels_last_3d) and not net[1].weight.is_contiguous()
    assert net[2].weight.is_contiguous()  # 1-D tensors are left alone
