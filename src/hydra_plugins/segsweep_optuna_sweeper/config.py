"""The sweeper's configs, registered with Hydra's ConfigStore when Hydra discovers the plugin:
``hydra/sweeper=optuna``, ``hydra/sweeper/sampler=<name>``, ``hydra/sweeper/pruner=<name>``.

Samplers and pruners are Optuna's own classes by ``_target_``; any other Optuna sampler or pruner
works the same way (``hydra.sweeper.pruner._target_=optuna.pruners.PatientPruner ...``).
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

SWEEPER = {
    "defaults": [{"sampler": "tpe"}, {"pruner": "nop"}],
    "_target_": "hydra_plugins.segsweep_optuna_sweeper.sweeper.OptunaSweeper",
    "_recursive_": False,  # the sweeper builds sampler and pruner itself and hands jobs the pruner config
    "direction": None,  # maximize | minimize; null: follows the app's monitor_mode (max / min)
    "study_name": "segsweep",
    "storage": None,  # null: a journal file in the sweep dir; or a path, or an RDB URL (sqlite:///x.db)
    "n_trials": 20,  # total over every run of the same study: a re-run continues up to it
    "n_jobs": 1,  # trials launched together (in parallel with a parallel launcher)
    "max_failures": None,  # stop the search after this many failed trials (null: never)
    "params": None,  # the search space: {key: "choice(a,b)" | "interval(lo,hi)" | ...}
    # At the end, run the k best trials again with each of these seeds (extra trials, job dirs
    # numbered after the search's): the leaderboard then groups each set-up's replicas.
    "reevaluate_top_k": 0,
    "reevaluate_seeds": [],
}

SAMPLERS = {
    "tpe": {"_target_": "optuna.samplers.TPESampler", "seed": None},
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": None},
    "cmaes": {"_target_": "optuna.samplers.CmaEsSampler", "seed": None},
    "qmc": {"_target_": "optuna.samplers.QMCSampler", "seed": None},
    "nsgaii": {"_target_": "optuna.samplers.NSGAIISampler", "seed": None},
    "grid": {"_target_": "optuna.samplers.GridSampler", "seed": None},  # search space from params
}

PRUNERS = {
    "nop": {"_target_": "optuna.pruners.NopPruner"},
    "median": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 5, "n_warmup_steps": 0},
    "percentile": {"_target_": "optuna.pruners.PercentilePruner", "percentile": 25.0,
                   "n_startup_trials": 5, "n_warmup_steps": 0},
    "successive_halving": {"_target_": "optuna.pruners.SuccessiveHalvingPruner"},
    "hyperband": {"_target_": "optuna.pruners.HyperbandPruner", "min_resource": 1, "max_resource": "auto"},
    "threshold": {"_target_": "optuna.pruners.ThresholdPruner", "lower": None, "upper": None},
}

store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="optuna", node=SWEEPER, provider="segsweep")
for name, node in SAMPLERS.items():
    store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="segsweep")
for name, node in PRUNERS.items():
    store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="segsweep")
