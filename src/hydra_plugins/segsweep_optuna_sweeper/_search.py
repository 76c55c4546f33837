"""One Optuna search: open or continue the study, launch trials in batches through Hydra's
launcher, tell the study how each went (COMPLETE, PRUNED or FAIL with its error), and keep
``optimization_results.yaml`` up to date in the sweep dir.

Trial numbers are job numbers, so the job dir of trial k is always ``<k>_<run name>``: a re-run
of the search resumes an interrupted trial in its own dir and never overwrites another's.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import optuna
import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.trial import Trial, TrialState

from hydra_plugins.segsweep_optuna_sweeper._search_space import grid_values, parse_search_space, trial_overrides
from segsweep.callbacks.pruning import PRUNED_ATTR, PRUNER_ATTR, TrialRef, open_storage

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
WAITING = (TrialState.WAITING,)
ERROR_ATTR = "error"
# Re-evaluation trials (hydra.sweeper.reevaluate_top_k): which search trial they repeat, with which seed.
REEVALUATES_ATTR, SEED_ATTR = "reevaluates_trial", "seed"
RESULTS_FILE = "optimization_results.yaml"


class Search:
    """The search a sweeper's settings describe, over the given override strings."""

    def __init__(self, sweeper, overrides: list[str]):
        self.sweeper = sweeper
        self.distributions, self.fixed = parse_search_space(overrides)
        self.n_trials = sweeper.n_trials
        pruner_cfg = OmegaConf.to_container(sweeper.pruner_cfg, resolve=True) if sweeper.pruner_cfg else None
        self.storage_spec = sweeper.storage_spec()
        if "://" not in self.storage_spec:
            Path(self.storage_spec).parent.mkdir(parents=True, exist_ok=True)
        storage = open_storage(self.storage_spec)
        direction = sweeper.study_direction()
        sampler = self.sampler(trials_so_far(storage, sweeper.study_name))
        self.study = optuna.create_study(
            study_name=sweeper.study_name, storage=storage, sampler=sampler,
            pruner=instantiate(pruner_cfg) if pruner_cfg else optuna.pruners.NopPruner(),
            direction=direction, load_if_exists=True)
        if self.study.direction.name.lower() != direction:
            raise ValueError(f"study '{sweeper.study_name}' in {self.storage_spec} was created to "
                             f"{self.study.direction.name.lower()}, this search asks to {direction}: "
                             "use another hydra.sweeper.study_name or storage")
        # The jobs build the same pruner from the study (they may run on other nodes).
        self.study.set_user_attr(PRUNER_ATTR, pruner_cfg)
        self.sweep_dir = sweeper.sweep_dir

    def sampler(self, trials_so_far: int):
        """The configured sampler. A continued study seeds it with seed + trials so far: the same
        seed would draw the first trials' parameters again."""
        sampler_cfg = self.sweeper.sampler_cfg
        if trials_so_far and sampler_cfg.get("seed") is not None:
            sampler_cfg = OmegaConf.merge(sampler_cfg, {"seed": sampler_cfg.seed + trials_so_far})
        if str(sampler_cfg.get("_target_", "")).endswith("GridSampler"):
            grid = {name: grid_values(name, d) for name, d in self.distributions.items()}
            self.n_trials = min(self.n_trials, math.prod(len(values) for values in grid.values()))
            return instantiate(sampler_cfg, search_space=grid)
        return instantiate(sampler_cfg)

    def run(self) -> list[JobReturn]:
        # RUNNING trials at start were interrupted (the search was killed): run them again first,
        # under their own numbers; the job resumes its dir (or returns its stored result).
        pending = [Trial(self.study, t._trial_id) for t in self.study.get_trials(False, states=(TrialState.RUNNING,))]
        log.info("Optuna study '%s' (%s, %s): %d trials finished, %d interrupted, %d in total",
                 self.study.study_name, self.storage_spec, self.study.direction.name.lower(),
                 len(self.search_trials(FINISHED)), len(pending), self.n_trials)
        returns: list[JobReturn] = []
        while not self.too_many_failures():
            room = self.n_trials - len(self.search_trials(FINISHED))
            room -= sum(REEVALUATES_ATTR not in t.user_attrs for t in pending)
            batch, pending = pending[: self.sweeper.n_jobs], pending[self.sweeper.n_jobs:]
            while len(batch) < self.sweeper.n_jobs and (room > 0 or self.waiting_reevaluations()):
                batch.append(self.study.ask(self.distributions))  # enqueued (WAITING) trials come first
                room -= REEVALUATES_ATTR not in batch[-1].user_attrs
            if not batch:
                if not self.enqueue_reevaluations():
                    break
                continue
            returns += self.launch(batch)
            self.write_results()
        self.write_results()
        return returns

    def waiting_reevaluations(self) -> bool:
        return any(REEVALUATES_ATTR in t.user_attrs for t in self.study.get_trials(False, states=WAITING))

    def search_trials(self, states=None) -> list:
        """The search's own trials (re-evaluations of its best ones left out)."""
        return [t for t in self.study.get_trials(False, states=states) if REEVALUATES_ATTR not in t.user_attrs]

    def enqueue_reevaluations(self) -> int:
        """Enqueue the top-k search trials again with each of ``reevaluate_seeds`` (those not
        run yet), so the leaderboard can tell a good set-up from a lucky seed; how many."""
        k, seeds = self.sweeper.reevaluate_top_k, list(self.sweeper.reevaluate_seeds or [])
        complete = self.search_trials((TrialState.COMPLETE,))
        top = sorted(complete, key=lambda t: t.value, reverse=self.study.direction.name == "MAXIMIZE")[:k]
        done = {(t.user_attrs[REEVALUATES_ATTR], t.user_attrs[SEED_ATTR]) for t in self.study.get_trials(False)
                if REEVALUATES_ATTR in t.user_attrs}
        missing = [(trial, seed) for trial in top for seed in seeds if (trial.number, seed) not in done]
        for trial, seed in missing:
            self.study.enqueue_trial(trial.params, user_attrs={REEVALUATES_ATTR: trial.number, SEED_ATTR: seed})
        if missing:
            log.info("Re-evaluating trials %s with seeds %s", [t.number for t in top], seeds)
        return len(missing)

    def too_many_failures(self) -> bool:
        limit = self.sweeper.max_failures
        failed = len(self.study.get_trials(False, states=(TrialState.FAIL,)))
        if limit is not None and failed >= limit:
            log.error("Stopping the search: %d trials failed (hydra.sweeper.max_failures=%d)", failed, limit)
            return True
        return False

    def launch(self, trials: list[Trial]) -> list[JobReturn]:
        """Launch trials as jobs numbered by trial number (Hydra numbers a launch consecutively,
        so each run of consecutive numbers is one launch) and tell the study each outcome."""
        returns: list[JobReturn] = []
        for block in consecutive_blocks(trials):
            overrides = [self.overrides(trial) for trial in block]
            try:
                results = list(self.sweeper.launcher.launch(overrides, initial_job_idx=block[0].number))
            except Exception as err:  # the launch itself (config, cluster) failed: every trial of it
                log.exception("Launching trials %s failed", [t.number for t in block])
                results = [err] * len(block)
            for trial, result in zip(block, results, strict=True):
                self.tell(trial, result)
                if isinstance(result, JobReturn):
                    returns.append(result)
        return returns

    def overrides(self, trial: Trial) -> list[str]:
        ref = TrialRef(self.storage_spec, self.study.study_name, trial.number)
        env = [f"++hydra.job.env_set.{key}={quote(value)}" for key, value in ref.env().items()]
        seed = {"seed": trial.user_attrs[SEED_ATTR]} if SEED_ATTR in trial.user_attrs else {}
        return [*trial_overrides(trial.params, {**self.fixed, **seed}), *env]

    def tell(self, trial: Trial, result: JobReturn | Exception) -> None:
        value, error = outcome(result, self.sweeper.config.get("optimized_metric"))
        # From the storage, not trial.user_attrs (a cache of this process): the job wrote it.
        pruned_at = self.study._storage.get_trial(trial._trial_id).user_attrs.get(PRUNED_ATTR)
        if error is not None:
            trial.set_user_attr(ERROR_ATTR, error)
            self.record(trial, state=TrialState.FAIL)
            log.warning("Trial %d failed, the search goes on: %s", trial.number, error)
        elif pruned_at is not None:
            self.record(trial, state=TrialState.PRUNED)
            log.info("Trial %d pruned after epoch %s", trial.number, pruned_at)
        else:
            self.record(trial, value)
            log.info("Trial %d finished: %s", trial.number, value)

    def record(self, trial: Trial, value: float | None = None, state: TrialState | None = None) -> None:
        try:
            self.study.tell(trial, value, state=state)
        except RuntimeError as err:
            # GridSampler calls study.stop() after its last point, which Optuna only allows inside
            # study.optimize; the trial is stored all the same (and n_trials is the grid's size).
            if "Study.stop" not in str(err):
                raise

    def write_results(self) -> None:
        """``optimization_results.yaml`` as the official plugin writes it (segsweep-report reads
        best_params / best_value), with the trial counts by state."""
        trials = self.study.get_trials(False)
        complete = self.search_trials((TrialState.COMPLETE,))
        pick = max if self.study.direction.name == "MAXIMIZE" else min
        best = pick(complete, key=lambda t: t.value) if complete else None
        repeats: dict[int, dict] = {}
        for t in trials:
            if REEVALUATES_ATTR in t.user_attrs and t.state == TrialState.COMPLETE:
                repeat = repeats.setdefault(t.user_attrs[REEVALUATES_ATTR], {"seeds": [], "values": []})
                repeat["seeds"].append(t.user_attrs[SEED_ATTR])
                repeat["values"].append(t.value)
        results = {
            "name": "optuna",
            "study_name": self.study.study_name,
            "storage": self.storage_spec,
            "direction": self.study.direction.name.lower(),
            "best_params": dict(best.params) if best else None,
            "best_value": best.value if best else None,
            "best_trial": best.number if best else None,
            "trials": {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState},
            **({"reevaluated": repeats} if repeats else {}),  # search trial -> its other seeds' values
        }
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        (self.sweep_dir / RESULTS_FILE).write_text(yaml.safe_dump(results, sort_keys=False))


def trials_so_far(storage, study_name: str) -> int:
    try:
        return len(storage.get_all_trials(storage.get_study_id_from_name(study_name), deepcopy=False))
    except KeyError:  # a new study
        return 0


def outcome(result: JobReturn | Exception, metric: str | None) -> tuple[float | None, str | None]:
    """(value, None) for a usable value, else (None, why the trial failed)."""
    if isinstance(result, Exception):
        return None, f"launch failed: {type(result).__name__}: {result}"
    if result.status != JobStatus.COMPLETED:
        err = result._return_value
        return None, f"{type(err).__name__}: {err}"
    value = result.return_value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None, f"the job returned {value!r}, not a number for optimized_metric={metric} (is it logged?)"
    if math.isfinite(number):
        return number, None
    return None, job_error(result) or f"optimized_metric={metric} is {number}"


def job_error(result: JobReturn) -> str | None:
    """The error a failed job recorded in its metrics.json, if any."""
    output_dir = OmegaConf.select(result.hydra_cfg, "hydra.runtime.output_dir") if result.hydra_cfg else None
    path = Path(output_dir) / "metrics.json" if output_dir else None
    try:
        return json.loads(path.read_text()).get("error") if path and path.is_file() else None
    except (OSError, ValueError):
        return None


def consecutive_blocks(trials: list[Trial]) -> list[list[Trial]]:
    """[3, 4, 7, 8, 9] -> [[3, 4], [7, 8, 9]] (by trial number)."""
    blocks: list[list[Trial]] = []
    for trial in sorted(trials, key=lambda t: t.number):
        if blocks and trial.number == blocks[-1][-1].number + 1:
            blocks[-1].append(trial)
        else:
            blocks.append([trial])
    return blocks


def quote(value: str) -> str:
    """A Hydra override value that stays one string whatever it holds (paths, URLs)."""
    return "'" + value.replace("'", "\\'") + "'"
