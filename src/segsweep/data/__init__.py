from segsweep.data.base import RawSample, SegmentationDataset
from segsweep.data.datamodule import SegmentationDataModule
from segsweep.data.folder import FolderDataset
from segsweep.data.instances import CocoInstances, InstanceFolderDataset, TiledInstances  # noqa: F401
from segsweep.data.synthetic import SyntheticShapes
from segsweep.data.synthetic3d import SyntheticBlobs3D
from segsweep.data.volumes import StackVolumeDataset, VolumeDataset, VolumeFolderDataset

__all__ = ["FolderDataset", "RawSample", "SegmentationDataModule", "SegmentationDataset", "StackVolumeDataset",
           "SyntheticBlobs3D", "SyntheticShapes", "VolumeDataset", "VolumeFolderDataset"]
