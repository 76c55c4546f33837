"""segsweep's Hydra sweeper over Optuna 4+ (``hydra/sweeper=optuna``): see ``sweeper.py``.

Hydra imports every module of the ``hydra_plugins`` namespace at start-up to find plugins and
their configs, so the modules here import Optuna only when a search starts.
"""
