"""segsweep: Lightning + Hydra experiments for binary, semantic and instance segmentation."""

__version__ = "0.1.0"
