from segsweep.tasks.base import SegmentationTask, load_task
from segsweep.tasks.segmentation import BinarySegmentationTask, SemanticSegmentationTask

__all__ = ["BinarySegmentationTask", "SegmentationTask", "SemanticSegmentationTask", "load_task"]
