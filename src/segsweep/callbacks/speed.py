"""GPU speed settings that are not hyperparameters: channels-last, ``torch.compile``, cuDNN autotuning.

A callback rather than task options so checkpoints, metrics and the task's code stay the same
with or without them (``trainer=gpu`` and ``trainer=ddp`` switch it on, see ``conf/callbacks/speed.yaml``).
"""

from __future__ import annotations

import lightning as L
import torch


def to_channels_last(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` with its 4-D tensors (Conv2d weights) in ``channels_last`` and its 5-D ones (Conv3d
    weights) in ``channels_last_3d``, in place. ``net.to(memory_format=torch.channels_last)``
    raises on 5-D weights, and ``channels_last_3d`` on 4-D ones; other tensors are left as they are."""
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        memory_format = formats.get(tensor.dim())
        return tensor.contiguous(memory_format=memory_format) if memory_format else tensor

    return net._apply(convert)  # what Module.to uses: parameters, their gradients and buffers


class SpeedUps(L.Callback):
    """Args:
        channels_last: convert the network's weights to the channels-last memory format, which
            tensor cores run convolutions in: NHWC for 2D convolutions, NDHWC
            (``torch.channels_last_3d``) for 3D ones (``ClassicUNet3D``); activations follow the
            weights' format. Decided per weight by its rank (``to_channels_last``), so a net
            mixing 2D and 3D layers gets each in its own format.
        compile: compile the network's forward with ``torch.compile`` (in place, ``nn.Module.compile``,
            so the state dict and checkpoints keep their keys). The first steps pay the
            compilation, and each new validation image size may recompile once.
        compile_options: keyword arguments for ``torch.compile`` (``mode``, ``backend``, ``dynamic``).
        cudnn_benchmark: let cuDNN time its convolution algorithms and keep the fastest, during
            training only: training crops have one shape, whereas whole validation images may
            differ in size and would be re-timed for each new shape.
    """

    def __init__(self, channels_last: bool = True, compile: bool = False, compile_options: dict | None = None,
                 cudnn_benchmark: bool = True):
        self.channels_last = channels_last
        self.compile = compile
        self.compile_options = dict(compile_options or {})
        self.cudnn_benchmark = cudnn_benchmark
        self._benchmark_before_eval: bool | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        net = pl_module.net
        if self.channels_last:
            to_channels_last(net)
        if self.compile and net._compiled_call_impl is None:  # once, whichever stage comes first
            net.compile(**self.compile_options)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True

    def _evaluation_starts(self) -> None:
        if self.cudnn_benchmark:
            self._benchmark_before_eval = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = False

    def _evaluation_ends(self) -> None:
        if self.cudnn_benchmark and self._benchmark_before_eval is not None:
            torch.backends.cudnn.benchmark = self._benchmark_before_eval

    def on_validation_start(self, trainer, pl_module) -> None:
        self._evaluation_starts()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._evaluation_ends()

    def on_test_start(self, trainer, pl_module) -> None:
        self._evaluation_starts()

    def on_test_end(self, trainer, pl_module) -> None:
        self._evaluation_ends()

    def on_train_end(self, trainer, pl_module) -> None:
        if self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = False
