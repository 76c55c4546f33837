from segsweep.tasks.base import SegmentationTask, load_task
from segsweep.tasks.instance import InstanceSegmentationTask  # noqa: F401
from segsweep.tasks.maskrcnn import MaskRCNNTask  # noqa: F401
from segsweep.tasks.segmentation import BinarySegmentationTask, SemanticSegmentationTask

__all__ = ["BinarySegmentationTask", "SegmentationTask", "SemanticSegmentationTask", "load_task"]
