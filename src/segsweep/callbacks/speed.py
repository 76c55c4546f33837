"""GPU speed settings that are not hyperparameters: channels-last, ``torch.compile``, cuDNN autotuning.

A callback rather than task options so checkpoints, metrics and the task's code stay the same
with or without them (``trainer=gpu`` and ``trainer=ddp`` switch it on, see ``conf/callbacks/speed.yaml``).
"""

from __future__ import annotations

import lightning as L
import torch


class SpeedUps(L.Callback):
    """Args:
        channels_last: convert the network's weights to the channels-last (NHWC) memory format,
            which tensor cores run convolutions in; activations follow the weights' format.
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
            net.to(memory_format=torch.channels_last)
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
