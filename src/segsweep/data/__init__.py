from segsweep.data.base import RawSample, SegmentationDataset
from segsweep.data.datamodule import SegmentationDataModule
from segsweep.data.folder import FolderDataset
from segsweep.data.instances import CocoInstances, InstanceFolderDataset, TiledInstances  # noqa: F401
from segsweep.data.synthetic import SyntheticShapes

__all__ = ["FolderDataset", "RawSample", "SegmentationDataModule", "SegmentationDataset", "SyntheticShapes"]
