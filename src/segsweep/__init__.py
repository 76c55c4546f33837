"""segsweep: Lightning + Hydra experiments for binary, semantic and instance segmentation.

Importing segsweep (or any of its library modules) only defines things: the entry points
(``segsweep.train``, ``segsweep.eval``, ``segsweep.predict``) register the config resolvers.
"""

__version__ = "0.1.0"
