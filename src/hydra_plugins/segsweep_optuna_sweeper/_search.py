"""One Optuna search worker: open or continue the study, launch trials in batches through Hydra's
launcher, tell the study how each went (COMPLETE, PRUNED or FAIL with its error), and keep
``optimization_results.yaml`` up to date in the sweep dir.

Many workers may share one study (two login sessions, two SLURM jobs, one storage): together they
run exactly ``n_trials`` and never two jobs in one job dir.

- **Job numbers.** A trial's job dir is ``<job number>_<run name>``. Both storages give out
  trial numbers atomically, and job numbers follow from them (:func:`job_numbers`, the same in
  every worker): the k-th fresh trial of the search is job k; a retry of an interrupted trial is
  the job of the trial it retries (its dir, so its job resumes from its last checkpoint);
  re-evaluations come after the search's ``n_trials`` jobs.
- **Claims.** A fresh trial past ``n_trials`` was asked by a worker that raced another for the
  last place, and one repeating a slot an earlier trial holds (the same retry, re-evaluation or
  grid point) raced for that slot: such a trial is told FAIL as ``surplus`` (Optuna cannot take a
  trial back) and runs nothing. Surplus trials count for nothing.
- **Owners.** A worker marks the trials it runs with its host, pid and a heartbeat it renews. A
  RUNNING trial whose owner is gone (its pid on this host, or no heartbeat for ``STALE_S``) was
  interrupted: it is told FAIL and a retry is enqueued with its parameters (those it lacks, killed
  before its parameters were drawn, are drawn then); a trial is never completed without them.
- **Samplers.** A random sampler (TPE, random, CMA-ES, NSGA-II) is seeded per trial from the
  sweeper's seed and the trial number: workers draw different points, and one worker's search is
  repeatable. QMC and grid samplers keep one seed: they pick points by count, across workers.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, Trial, TrialState

from hydra_plugins.segsweep_optuna_sweeper._search_space import grid_values, parse_search_space, trial_overrides
from segsweep.jobs.files import METRICS_FILE, process_alive, read_json, write_atomic
from segsweep.jobs.trial import PRUNED_ATTR, PRUNER_ATTR, TrialRef, open_storage

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
ERROR_ATTR = "error"
# Re-evaluation trials (hydra.sweeper.reevaluate_top_k): which search trial they repeat, with which seed.
REEVALUATES_ATTR, SEED_ATTR = "reevaluates_trial", "seed"
RETRY_ATTR = "segsweep_retries_trial"  # a retry of an interrupted trial: that trial's number (its job dir)
SURPLUS_ATTR = "segsweep_surplus"  # lost a race for a place or a slot: never run, counts for nothing
OWNER_ATTR, HEARTBEAT_ATTR = "segsweep_owner", "segsweep_heartbeat"
HEARTBEAT_S = 30.0  # how often a worker renews the heartbeat of the trials it runs
STALE_S = 150.0  # a RUNNING trial without a heartbeat for this long has lost its worker
RESULTS_FILE = "optimization_results.yaml"
INTERRUPTED = "interrupted"  # the error of a trial whose worker stopped (it is retried; not a failure)
PER_TRIAL_SEED = ("TPESampler", "RandomSampler", "CmaEsSampler", "NSGAIISampler")


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
        self.storage = open_storage(self.storage_spec)
        direction = sweeper.study_direction()
        self.study = optuna.create_study(
            study_name=sweeper.study_name, storage=self.storage, sampler=self.sampler(),
            pruner=instantiate(pruner_cfg) if pruner_cfg else optuna.pruners.NopPruner(),
            direction=direction, load_if_exists=True)
        if self.study.direction.name.lower() != direction:
            raise ValueError(f"study '{sweeper.study_name}' in {self.storage_spec} was created to "
                             f"{self.study.direction.name.lower()}, this search asks to {direction}: "
                             "use another hydra.sweeper.study_name or storage")
        self.study_id = self.storage.get_study_id_from_name(sweeper.study_name)
        # The jobs build the same pruner from the study (they may run on other nodes).
        self.study.set_user_attr(PRUNER_ATTR, pruner_cfg)
        self.sweep_dir = sweeper.sweep_dir
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "worker": uuid.uuid4().hex[:12]}
        self.running: dict[int, int] = {}  # trial number -> trial id, of the trials this worker runs
        self._lock = threading.Lock()

    # -- sampling -------------------------------------------------------------------------------
    @property
    def seeded_per_trial(self) -> bool:
        cfg = self.sweeper.sampler_cfg
        return cfg.get("seed") is not None and str(cfg.get("_target_", "")).endswith(PER_TRIAL_SEED)

    def sampler(self, trial_number: int | None = None):
        """The configured sampler; a random one seeded from (seed, ``trial_number``) when given."""
        cfg = self.sweeper.sampler_cfg
        target = str(cfg.get("_target_", ""))
        if trial_number is not None and self.seeded_per_trial:
            mixed = np.random.SeedSequence([int(cfg.seed), trial_number]).generate_state(1)[0]
            cfg = OmegaConf.merge(cfg, {"seed": int(mixed & 0x7FFFFFFF)})
        if target.endswith("GridSampler"):
            grid = {name: grid_values(name, d) for name, d in self.distributions.items()}
            self.n_trials = min(self.n_trials, math.prod(len(values) for values in grid.values()))
            return instantiate(cfg, search_space=grid)
        return instantiate(cfg)

    def draw(self, trial: Trial) -> None:
        """Draw the trial's parameters (those an enqueued trial fixed are kept) through public API."""
        if self.seeded_per_trial:
            self.study.sampler = self.sampler(trial.number)
        for name, distribution in self.distributions.items():
            suggest(trial, name, distribution)

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> list[JobReturn]:
        log.info("Optuna study '%s' (%s, %s): %d of %d trials done; worker %s",
                 self.study.study_name, self.storage_spec, self.study.direction.name.lower(),
                 len(self.counted(FINISHED)), self.n_trials, self.owner["worker"])
        returns: list[JobReturn] = []
        stop = threading.Event()
        beat = threading.Thread(target=self.heartbeats, args=(stop,), daemon=True, name="optuna-heartbeat")
        beat.start()
        try:
            while not self.too_many_failures():
                self.retry_interrupted()
                batch = self.claim_batch()
                if not batch:
                    if not self.enqueue_reevaluations():
                        break
                    continue
                returns += self.launch(batch)
                self.write_results()
        finally:
            stop.set()
            beat.join(timeout=5)
        self.write_results()
        return returns

    def claim_batch(self) -> list[Trial]:
        """Up to ``n_jobs`` trials this worker runs next: enqueued ones (retries, re-evaluations,
        the user's) first, then fresh ones while the search has room."""
        batch: list[Trial] = []
        while len(batch) < self.sweeper.n_jobs:
            waiting = self.trials((TrialState.WAITING,))
            if not waiting and self.room() <= 0:
                break
            trial = self.study.ask()  # pops a waiting trial if there is one
            self.storage.set_trial_user_attr(self.trial_id(trial.number), OWNER_ATTR, self.owner)
            self.beat(trial.number)
            stored = self.frozen(trial.number)
            surplus = self.surplus_reason(stored)
            if surplus:
                trial.set_user_attr(SURPLUS_ATTR, surplus)
                self.record(trial.number, state=TrialState.FAIL)
                log.info("Trial %d not run: %s", trial.number, surplus)
                if slot_of(stored) is None:  # the search's last place was taken: no more fresh trials
                    break
                continue
            self.draw(trial)
            batch.append(trial)
        return batch

    def room(self) -> int:
        """Fresh search trials still to ask: ``n_trials`` less the search's jobs so far."""
        return self.n_trials - len(self.counted())

    # -- what counts ----------------------------------------------------------------------------
    def trials(self, states=None) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states)

    def jobs(self) -> dict[int, int | None]:
        return job_numbers(self.trials(), self.n_trials)

    def counted(self, states=None) -> set[int]:
        """Job numbers (below ``n_trials``: the search's own) of the trials in ``states``."""
        jobs = self.jobs()
        return {jobs[t.number] for t in self.trials(states)
                if jobs.get(t.number) is not None and jobs[t.number] < self.n_trials}

    def surplus_reason(self, trial: FrozenTrial) -> str | None:
        """Why ``trial`` must not run (an earlier trial holds its slot or the last place), or None."""
        if self.jobs().get(trial.number) is not None:
            return None
        if slot_of(trial) is not None:
            return f"an earlier trial holds its slot {slot_of(trial)}"
        return f"n_trials={self.n_trials} were taken by then (another worker asked at the same time)"

    # -- owners, heartbeats, interrupted trials -------------------------------------------------------
    def beat(self, number: int) -> None:
        with self._lock:
            trial_id = self.running.setdefault(number, self.trial_id(number))
        self.storage.set_trial_user_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def heartbeats(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            with self._lock:
                running = dict(self.running)
            for number, trial_id in running.items():
                try:
                    self.storage.set_trial_user_attr(trial_id, HEARTBEAT_ATTR, time.time())
                except Exception:  # finished meanwhile (told by this worker): nothing to renew
                    with self._lock:
                        self.running.pop(number, None)

    def interrupted(self, trial: FrozenTrial) -> bool:
        """A RUNNING trial whose worker is gone: its pid is dead on this host, or its heartbeat (or
        start, for one killed before it was marked) is older than ``STALE_S``."""
        if trial.state != TrialState.RUNNING or trial.number in self.running:
            return False
        owner = trial.user_attrs.get(OWNER_ATTR) or {}
        if process_alive(owner.get("host"), owner.get("pid")) is False:
            return True
        last = trial.user_attrs.get(HEARTBEAT_ATTR)
        if last is None and trial.datetime_start is not None:
            last = trial.datetime_start.timestamp()
        return last is not None and time.time() - last > STALE_S

    def retry_interrupted(self) -> None:
        """Fail each interrupted trial and enqueue its retry: same parameters, same job dir."""
        for trial in [t for t in self.trials((TrialState.RUNNING,)) if self.interrupted(t)]:
            trial_id = self.trial_id(trial.number)
            try:
                self.storage.set_trial_user_attr(trial_id, ERROR_ATTR, f"{INTERRUPTED}: its worker stopped")
                self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
            except Exception:  # another worker failed it first: its retry is on the way
                continue
            self.study.enqueue_trial(dict(trial.params), user_attrs={RETRY_ATTR: trial.number},
                                     skip_if_exists=False)
            log.warning("Trial %d was interrupted (its worker stopped): retried in its own job dir",
                        trial.number)

    # -- re-evaluations and failures ----------------------------------------------------------------
    def enqueue_reevaluations(self) -> int:
        """Enqueue the top-k search trials again with each of ``reevaluate_seeds`` (those not
        run yet), so the leaderboard can tell a good set-up from a lucky seed; how many."""
        k, seeds = self.sweeper.reevaluate_top_k, list(self.sweeper.reevaluate_seeds or [])
        if not k or not seeds or self.trials((TrialState.RUNNING, TrialState.WAITING)):
            return 0
        complete = [t for t in self.trials((TrialState.COMPLETE,)) if REEVALUATES_ATTR not in t.user_attrs]
        top = sorted(complete, key=lambda t: t.value, reverse=self.study.direction.name == "MAXIMIZE")[:k]
        done = {(t.user_attrs[REEVALUATES_ATTR], t.user_attrs[SEED_ATTR]) for t in self.trials()
                if REEVALUATES_ATTR in t.user_attrs and SURPLUS_ATTR not in t.user_attrs}
        missing = [(trial, seed) for trial in top for seed in seeds if (trial.number, seed) not in done]
        for trial, seed in missing:
            self.study.enqueue_trial(trial.params, user_attrs={REEVALUATES_ATTR: trial.number, SEED_ATTR: seed},
                                     skip_if_exists=False)
        if missing:
            log.info("Re-evaluating trials %s with seeds %s", [t.number for t in top], seeds)
        return len(missing)

    def too_many_failures(self) -> bool:
        limit = self.sweeper.max_failures
        failed = [t for t in self.trials((TrialState.FAIL,)) if SURPLUS_ATTR not in t.user_attrs
                  and not str(t.user_attrs.get(ERROR_ATTR, "")).startswith(INTERRUPTED)]
        if limit is not None and len(failed) >= limit:
            log.error("Stopping the search: %d trials failed (hydra.sweeper.max_failures=%d)", len(failed), limit)
            return True
        return False

    # -- launching and telling --------------------------------------------------------------------
    def launch(self, trials: list[Trial]) -> list[JobReturn]:
        """Launch trials as jobs numbered by job number (Hydra numbers a launch consecutively, so
        each run of consecutive job numbers is one launch) and tell the study each outcome."""
        returns: list[JobReturn] = []
        jobs = self.jobs()
        for block in consecutive_blocks([(jobs[t.number], t) for t in trials]):
            overrides = [self.overrides(trial) for _, trial in block]
            try:
                results = list(self.sweeper.launcher.launch(overrides, initial_job_idx=block[0][0]))
            except Exception as err:  # the launch itself (config, cluster) failed: every trial of it
                log.exception("Launching trials %s failed", [t.number for _, t in block])
                results = [err] * len(block)
            for (_, trial), result in zip(block, results, strict=True):
                self.tell(trial, result)
                if isinstance(result, JobReturn):
                    returns.append(result)
        return returns

    def overrides(self, trial: Trial) -> list[str]:
        ref = TrialRef(self.storage_spec, self.study.study_name, trial.number)
        env = [f"++hydra.job.env_set.{key}={quote(value)}" for key, value in ref.env().items()]
        seed = {"seed": trial.user_attrs[SEED_ATTR]} if SEED_ATTR in trial.user_attrs else {}
        retried = trial.user_attrs.get(RETRY_ATTR)
        while retried is not None and SEED_ATTR not in seed:  # a retry of a re-evaluation: its seed
            original = self.frozen(retried)
            seed = {"seed": original.user_attrs[SEED_ATTR]} if SEED_ATTR in original.user_attrs else {}
            retried = original.user_attrs.get(RETRY_ATTR)
        return [*trial_overrides(trial.params, {**self.fixed, **seed}), *env]

    def tell(self, trial: Trial, result: JobReturn | Exception) -> None:
        value, error = outcome(result, self.sweeper.config.get("optimized_metric"))
        pruned_at = self.frozen(trial.number).user_attrs.get(PRUNED_ATTR)  # the job wrote it
        if error is not None:
            trial.set_user_attr(ERROR_ATTR, error)
            self.record(trial.number, state=TrialState.FAIL)
            log.warning("Trial %d failed, the search goes on: %s", trial.number, error)
        elif pruned_at is not None:
            self.record(trial.number, state=TrialState.PRUNED)
            log.info("Trial %d pruned after epoch %s", trial.number, pruned_at)
        else:
            self.record(trial.number, value)
            log.info("Trial %d finished: %s", trial.number, value)

    def record(self, number: int, value: float | None = None, state: TrialState | None = None) -> None:
        try:
            self.study.tell(number, value, state=state)
        except RuntimeError as err:
            # GridSampler calls study.stop() after its last point, which Optuna only allows inside
            # study.optimize; the trial is stored all the same (and n_trials is the grid's size).
            if "Study.stop" not in str(err):
                raise
        with self._lock:
            self.running.pop(number, None)

    # -- storage lookups (public storage API: trial ids by number) --------------------------------
    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def frozen(self, number: int) -> FrozenTrial:
        """The trial as stored now (a job may have written to it from another process)."""
        return self.storage.get_trial(self.trial_id(number))

    def write_results(self) -> None:
        """``optimization_results.yaml`` as the official plugin writes it (segsweep-report reads
        best_params / best_value), with the trial counts by state."""
        trials = [t for t in self.trials() if SURPLUS_ATTR not in t.user_attrs]
        complete = [t for t in trials if t.state == TrialState.COMPLETE and REEVALUATES_ATTR not in t.user_attrs]
        pick = max if self.study.direction.name == "MAXIMIZE" else min
        best = pick(complete, key=lambda t: t.value) if complete else None
        repeats: dict[int, dict] = {}
        for t in sorted(trials, key=lambda t: t.number):
            if REEVALUATES_ATTR in t.user_attrs and t.state == TrialState.COMPLETE:
                repeat = repeats.setdefault(t.user_attrs[REEVALUATES_ATTR], {"seeds": [], "values": []})
                repeat["seeds"].append(t.user_attrs[SEED_ATTR])
                repeat["values"].append(t.value)
        results = {
            "name": "optuna",
            "study_name": self.study.study_name,
            "storage": self.storage_spec,
            "direction": self.study.direction.name.lower(),
            "n_trials": self.n_trials,  # the search's jobs (a grid's size when smaller)
            "best_params": dict(best.params) if best else None,
            "best_value": best.value if best else None,
            "best_trial": best.number if best else None,
            "trials": {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState},
            **({"reevaluated": repeats} if repeats else {}),  # search trial -> its other seeds' values
        }
        write_atomic(self.sweep_dir / RESULTS_FILE, yaml.safe_dump(results, sort_keys=False))


def job_numbers(trials: list[FrozenTrial], n_trials: int) -> dict[int, int | None]:
    """Trial number -> job number, ``None`` for a surplus trial (see the module doc). A pure
    function of the trials in number order, so every worker computes the same."""
    jobs: dict[int, int | None] = {}
    fresh, slots, reevaluations = 0, set(), 0
    for trial in sorted(trials, key=lambda t: t.number):
        slot = slot_of(trial)
        if SURPLUS_ATTR in trial.user_attrs or (slot is not None and slot in slots):
            jobs[trial.number] = None
            continue
        if slot is not None and slot[0] != "grid":
            slots.add(slot)
        if RETRY_ATTR in trial.user_attrs:
            jobs[trial.number] = jobs.get(trial.user_attrs[RETRY_ATTR])
        elif REEVALUATES_ATTR in trial.user_attrs:
            jobs[trial.number], reevaluations = n_trials + reevaluations, reevaluations + 1
        else:  # a fresh search trial (or one the user enqueued): the next place, while there is one
            if slot is not None:
                slots.add(slot)
            jobs[trial.number], fresh = (fresh if fresh < n_trials else None), fresh + 1
    return jobs


def slot_of(trial: FrozenTrial):
    """What only one trial may hold: the retry of trial k, the re-evaluation of k with a seed, a
    grid point; None for a fresh search trial (its place is its number)."""
    if RETRY_ATTR in trial.user_attrs:
        return ("retry", trial.user_attrs[RETRY_ATTR])
    if REEVALUATES_ATTR in trial.user_attrs:
        return ("reevaluate", trial.user_attrs[REEVALUATES_ATTR], trial.user_attrs.get(SEED_ATTR))
    if "grid_id" in trial.system_attrs:
        return ("grid", trial.system_attrs["grid_id"])
    return None


def suggest(trial: Trial, name: str, distribution: BaseDistribution):
    """``trial.suggest_*`` for a distribution (Optuna's public API: one method per kind)."""
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step,
                                 log=distribution.log)
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step,
                                   log=distribution.log)
    raise TypeError(f"hydra.sweeper.params.{name}: unsupported distribution {distribution}")


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
    record = read_json(Path(output_dir) / METRICS_FILE) if output_dir else None
    return (record or {}).get("error")


def consecutive_blocks(numbered: list[tuple[int, object]]) -> list[list[tuple[int, object]]]:
    """[(3, a), (4, b), (7, c)] -> [[(3, a), (4, b)], [(7, c)]] (by job number)."""
    blocks: list[list] = []
    for item in sorted(numbered, key=lambda pair: pair[0]):
        if blocks and item[0] == blocks[-1][-1][0] + 1:
            blocks[-1].append(item)
        else:
            blocks.append([item])
    return blocks


def quote(value: str) -> str:
    """A Hydra override value that stays one string whatever it holds (paths, URLs)."""
    return "'" + value.replace("'", "\\'") + "'"
