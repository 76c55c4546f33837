from segsweep.data.base import RawSample, SegmentationDataset
from segsweep.data.datamodule import SegmentationDataModule
from segsweep.data.folder import FolderDataset
from segsweep.data.synthetic import SyntheticShapes

__all__ = ["FolderDataset", "RawSample", "SegmentationDataModule", "SegmentationDataset", "SyntheticShapes"]
