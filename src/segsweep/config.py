"""The shipped Hydra configs, for every entry point (train, eval, predict, receptive field, scripts).

``conf/`` is packaged as ``segsweep.conf`` and found by import, from a checkout or a wheel. The
entry points register the configs' resolvers (``segsweep.resolvers``) when they are imported:
launcher processes (joblib, submitit) import them to run a job.
"""

from __future__ import annotations

from importlib.resources import files

CONFIG_DIR = str(files("segsweep.conf"))
