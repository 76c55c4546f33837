from segsweep.tasks.base import SegmentationTask, load_task
from segsweep.tasks.instance import InstanceSegmentationTask
from segsweep.tasks.instance_base import InstanceTask
from segsweep.tasks.maskrcnn import MaskRCNNTask
from segsweep.tasks.per_pixel import PerPixelTask
from segsweep.tasks.segmentation import BinarySegmentationTask, SemanticSegmentationTask

__all__ = [
    "BinarySegmentationTask",
    "InstanceSegmentationTask",
    "InstanceTask",
    "MaskRCNNTask",
    "PerPixelTask",
    "SegmentationTask",
    "SemanticSegmentationTask",
    "load_task",
]
