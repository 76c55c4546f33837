"""Receptive field of a segmentation model: measured by gradients, and by formula for plain chains.

``segsweep-rf model=unet encoder=resnet18`` composes the same model config as ``segsweep-train``
and reports the receptive field of the centre output pixel; options (not in ``conf/train.yaml``)
come with a ``+``: ``+rf.size=512 +rf.max_size=4096 +rf.in_channels=1 +rf.samples=4``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

# Layers that map each pixel to itself: they leave the receptive field of a chain unchanged.
POINTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Identity,
             nn.BatchNorm2d, nn.InstanceNorm2d, nn.Dropout, nn.Dropout2d)


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def _forward_grad(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    """|d centre output / d input| summed over samples and channels: ``(H, W)`` numpy."""
    inputs.requires_grad_(True)
    with torch.enable_grad():  # works even when called under torch.no_grad / inference code
        out = model(inputs)
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        raise TypeError(f"model must return (N, K, H, W) logits, got {type(out).__name__}")
    centre = out[:, :, out.shape[-2] // 2, out.shape[-1] // 2].sum()  # all samples and channels
    (grad,) = torch.autograd.grad(centre, inputs)  # input grads only: no parameter .grad filled
    return grad.abs().sum(dim=(0, 1)).cpu().numpy()


def empirical_receptive_field(
    model: nn.Module, in_channels: int, size: int = 256, max_size: int = 2048, samples: int = 4,
    seed: int = 0,
) -> dict:
    """Measure the receptive field of the centre output pixel from input gradients.

    The input pixels whose gradient is non-zero are those the centre output depends on; their
    bounding box is the receptive field. Inputs are ``samples`` deterministic random images
    (seeded), and a pixel counts if its absolute gradient is non-zero for any of them: a single
    input can hide part of the field (a ReLU off along a path, a max-pool picking another pixel of
    its window), random inputs make such dead spots random and their union recovers the full
    field; constant inputs would not (ties in max-pooling always pick the same pixel).

    The model runs in eval mode (restored afterwards): BatchNorm uses its running statistics, so
    neither couples the samples nor updates them, and dropout is off.

    Args:
        model: maps ``(N, in_channels, H, W)`` to ``(N, K, h, w)``.
        in_channels: input channels the model expects.
        size: side of the square input, rounded up to the model's ``output_stride``/
            ``min_input_size`` when it has them. If the field touches the input border it may be
            cut, so the size is doubled and the measure repeated, up to ``max_size``.
        max_size: largest side tried; beyond it the result is a lower bound (with a warning).
        samples: random inputs measured together (one batch).
        seed: seed of the random inputs.

    Returns:
        dict with ``height``, ``width`` (pixels), ``bbox`` (top, left, bottom, right, inclusive),
        ``size`` (input side of the final measure), ``sizes_tried``, ``lower_bound`` (True when
        the field still touched the border at ``max_size``), and ``grad``, the ``(size, size)``
        map of summed absolute gradients for plotting.
    """
    stride, least = (int(getattr(model, k, 1)) for k in ("output_stride", "min_input_size"))
    multiple = math.lcm(stride, least)
    size = max(multiple, -(-size // multiple) * multiple)
    was_training, tried = model.training, []
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    param = next(model.parameters(), None)
    device, dtype = (param.device, param.dtype) if param is not None else ("cpu", torch.float32)
    try:
        while True:
            tried.append(size)
            inputs = torch.randn(samples, in_channels, size, size, generator=generator)
            grad = _forward_grad(model, inputs.to(device, dtype))
            rows, cols = np.nonzero(grad.any(axis=1))[0], np.nonzero(grad.any(axis=0))[0]
            if rows.size == 0:
                raise ValueError("the centre output does not depend on the input (zero gradient)")
            touches = rows[0] == 0 or cols[0] == 0 or rows[-1] == size - 1 or cols[-1] == size - 1
            if not touches or size * 2 > max_size:
                break
            size *= 2
    finally:
        model.train(was_training)
    if touches:
        warnings.warn(f"the receptive field reaches the border of a {size}px input: it is at least "
                      f"the reported size; raise max_size for the full field", stacklevel=2)
    top, bottom, left, right = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    return {"height": bottom - top + 1, "width": right - left + 1,
            "bbox": (top, left, bottom, right), "size": size, "sizes_tried": tried,
            "lower_bound": bool(touches), "grad": grad}


def theoretical_receptive_field(model: nn.Module) -> int | None:
    """Receptive field by formula for a plain chain of Conv2d / MaxPool2d / AvgPool2d layers.

    Walks the layers in order: ``rf += (kernel - 1) * dilation * jump; jump *= stride`` (``jump``
    is the distance in input pixels between neighbouring units of the current layer); pointwise
    layers (activations, normalisation, dropout) change nothing.

    Returns None when the model is not such a chain, because its layer order then says nothing
    about its data flow: any container other than ``nn.Sequential`` (its ``forward`` may branch,
    e.g. skip connections), or any other layer (upsampling and transposed convolutions map
    outputs back to finer grids, global pooling sees everything, attention too). Also None when
    the height and width fields differ (non-square kernels or strides). Use
    :func:`empirical_receptive_field` for those.
    """
    rf, jump = [1, 1], [1, 1]
    for module in model.modules():
        # a Sequential subclass with its own forward (smp has some) may not run its layers in order
        if type(module).forward is nn.Sequential.forward or isinstance(module, POINTWISE):
            continue
        if not isinstance(module, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
            return None
        kernel, stride, dilation = (
            _pair(getattr(module, key, 1)) for key in ("kernel_size", "stride", "dilation")
        )
        for axis in (0, 1):
            rf[axis] += (kernel[axis] - 1) * dilation[axis] * jump[axis]
            jump[axis] *= stride[axis]
    return rf[0] if rf[0] == rf[1] else None


def save_gradient_map(grad: np.ndarray, path: Path, title: str) -> Path:
    """Plot the gradient map on a log colour scale (the field decays fast away from its centre)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    positive = grad[grad > 0]
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(np.where(grad > 0, grad, np.nan), cmap="viridis",
                      norm=LogNorm(vmin=positive.min(), vmax=positive.max()))
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="|d centre output / d input|")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def main(cfg: DictConfig | None = None) -> dict:
    """``segsweep-rf``: receptive field of the configured model (random weights, nothing loaded).

    A Hydra app on ``conf/train.yaml`` (the configs' resolvers registered here, at call time: the
    functions above need no Hydra set-up). A given ``cfg`` (tests) is used as is.
    """
    from segsweep.config import CONFIG_DIR
    from segsweep.resolvers import register as register_resolvers

    register_resolvers()
    app = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")(run)
    return app(cfg)


def run(cfg: DictConfig) -> dict:
    """Measure, print and plot the receptive field of ``cfg.model`` (see :func:`main`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    options = cfg.get("rf") or {}
    # the data config's channels when it states them (isbi2012: 1), else RGB; +rf.in_channels wins
    data_channels = cfg.data.get("dataset", {}).get("in_channels")
    in_channels = int(options.get("in_channels") or data_channels or 3)
    model = instantiate(cfg.model)(in_channels=in_channels, classes=1)
    result = empirical_receptive_field(
        model, in_channels, size=int(options.get("size", 256)),
        max_size=int(options.get("max_size", 2048)), samples=int(options.get("samples", 4)),
    )
    choices = HydraConfig.get().runtime.choices
    name = f"{choices.get('model')}-{choices.get('encoder')}"
    bound = ">= " if result["lower_bound"] else ""
    print(f"{name}: empirical receptive field {bound}{result['height']} x {result['width']} px "
          f"(input {result['size']} px, sizes tried {result['sizes_tried']})")
    theory = theoretical_receptive_field(model)
    print(f"{name}: theoretical receptive field "
          + (f"{theory} px" if theory else "n/a (not a plain conv/pool chain)"))
    out = Path(cfg.paths.output_dir) / "receptive_field.png"  # the Hydra run dir by default
    out.parent.mkdir(parents=True, exist_ok=True)
    title = f"{name}: RF {bound}{result['height']}x{result['width']} px"
    save_gradient_map(result["grad"], out, title)
    print(f"gradient map: {out}")
    return {k: v for k, v in result.items() if k != "grad"} | {"theoretical": theory}


if __name__ == "__main__":
    main()
