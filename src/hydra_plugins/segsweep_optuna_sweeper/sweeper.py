"""``hydra/sweeper=optuna``: a Hydra sweeper over Optuna 4+ whose searches survive failed trials,
prune bad ones, resume, and launch through whatever Hydra launcher is configured.

Replaces hydra-optuna-sweeper 1.3 (pinned to Optuna 2, ends the search on the first failed or NaN
trial, no pruning, resume re-numbers job dirs from 0). The search itself is ``_search.py``; this
module stays free of Optuna so that Hydra's plugin scan at every start-up stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

DIRECTIONS = {"max": "maximize", "min": "minimize"}


class OptunaSweeper(Sweeper):
    """Optuna search over ``params`` (the official plugin's syntax) for ``n_trials`` in total.

    ``sampler`` and ``pruner`` are Optuna configs (``_target_``); ``storage`` None keeps the
    study in ``<sweep dir>/optuna_journal.log`` (Optuna's journal file storage), a path puts that
    file elsewhere, a URL selects a database. ``direction`` None follows the app's ``monitor_mode``.
    """

    def __init__(self, sampler: DictConfig, pruner: DictConfig | None, direction: str | None, study_name: str,
                 storage: str | None, n_trials: int, n_jobs: int, max_failures: int | None,
                 params: DictConfig | None, reevaluate_top_k: int = 0, reevaluate_seeds=()) -> None:
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.n_jobs, self.max_failures = n_trials, n_jobs, max_failures
        self.params = params or {}
        self.reevaluate_top_k, self.reevaluate_seeds = reevaluate_top_k, list(reevaluate_seeds or [])
        for key, value in {"n_trials": n_trials, "n_jobs": n_jobs}.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"hydra.sweeper.{key}={value!r}: give a positive integer")
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = Path(config.hydra.sweep.dir)

    def study_direction(self) -> str:
        direction = self.direction or DIRECTIONS.get(str(self.config.get("monitor_mode")))
        if direction not in DIRECTIONS.values():
            raise ValueError(f"hydra.sweeper.direction={self.direction!r} (monitor_mode="
                             f"{self.config.get('monitor_mode')!r}): give maximize or minimize")
        return direction

    def storage_spec(self) -> str:
        """Where the study lives, as the jobs open it too: an RDB URL or a journal file path."""
        spec = str(self.storage) if self.storage else str(self.sweep_dir / "optuna_journal.log")
        return spec if "://" in spec else str(Path(spec).absolute())

    def space_overrides(self, arguments: list[str]) -> list[str]:
        """``hydra.sweeper.params`` then the command line's own overrides (which win)."""
        params = OmegaConf.to_container(OmegaConf.create(self.params))
        return [f"{key}={value}" for key, value in params.items()] + list(arguments)

    def sweep(self, arguments: list[str]) -> Any:
        from hydra_plugins.segsweep_optuna_sweeper._search import Search  # imports Optuna
        from segsweep.jobs.files import write_atomic

        # As Hydra's basic sweeper does: the sweep's config, which segsweep-report reads (the
        # search's n_trials: the trials not started yet).
        write_atomic(self.sweep_dir / "multirun.yaml", OmegaConf.to_yaml(self.config))
        return Search(self, self.space_overrides(arguments)).run()
