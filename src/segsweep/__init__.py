"""segsweep: Lightning + Hydra experiments for binary, semantic and instance segmentation."""

__version__ = "0.1.0"

from segsweep.resolvers import register as _register_resolvers

_register_resolvers()
