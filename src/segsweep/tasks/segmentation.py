"""Binary and semantic segmentation: only what differs from the base task."""

from __future__ import annotations

import torch

from segsweep.tasks.base import SegmentationTask


class BinarySegmentationTask(SegmentationTask):
    """Object vs background: one output channel, sigmoid, class 1 is the object."""

    loss_mode = "binary"

    def check_classes(self) -> None:
        if len(self.class_names) != 2:
            raise ValueError(
                f"task=binary needs exactly 2 classes (background, object) but the data has "
                f"{len(self.class_names)}: {self.class_names}; use task=semantic"
            )

    @property
    def num_outputs(self) -> int:
        return 1

    def logits_to_probs(self, logits: torch.Tensor) -> torch.Tensor:
        foreground = torch.sigmoid(logits)
        return torch.cat([1 - foreground, foreground], dim=1)


class SemanticSegmentationTask(SegmentationTask):
    """One class per pixel: one output channel per class, softmax."""

    loss_mode = "multiclass"

    def check_classes(self) -> None:
        if len(self.class_names) < 2:
            raise ValueError(f"task=semantic needs at least 2 classes, the data has {self.class_names}")

    @property
    def num_outputs(self) -> int:
        return len(self.class_names)

    def logits_to_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=1)
