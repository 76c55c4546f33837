"""Optuna searches (``hparams_search=optuna``, our sweeper in src/hydra_plugins): the search space
syntax, failed and diverged trials, pruning, resume after a kill, parallel trials."""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from conftest import CONFIG_DIR, FAST, TINY_ENCODER
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from hydra_plugins.segsweep_optuna_sweeper._search import (
    OWNER_ATTR,
    RETRY_ATTR,
    STALE_S,
    SURPLUS_ATTR,
    Search,
    consecutive_blocks,
)
from hydra_plugins.segsweep_optuna_sweeper._search_space import grid_values, parse_search_space
from hydra_plugins.segsweep_optuna_sweeper.sweeper import OptunaSweeper
from segsweep.callbacks import DivergedError
from segsweep.jobs.run import run_job
from segsweep.train import train

GROUP_CHOICES = {group: [p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml")]
                 for group in ("loss", "model", "encoder")}
# The search's own settings: tiny runs, no image logger, the study in the sweep dir's journal.
SEARCH = ["hparams_search=optuna", *FAST, "data.splits.val.num_images=2", "hydra.sweeper.params=null"]


def search_command(sweep, *args):
    return [sys.executable, "-m", "segsweep.train", "-m", *SEARCH, *args, f"hydra.sweep.dir={sweep}"]


def search(tmp_path, *args, sweep=None):
    sweep = sweep or tmp_path / "sweep"
    done = subprocess.run(search_command(sweep, *args), cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return sweep


def load_study(sweep):
    storage = JournalStorage(JournalFileBackend(str(sweep / "optuna_journal.log")))
    return optuna.load_study(study_name="segsweep", storage=storage)


def completed_trials(sweep) -> int:
    """How many trials the study has completed (0 until the search has created it)."""
    try:
        return len(load_study(sweep).get_trials(states=(TrialState.COMPLETE,)))
    except (KeyError, FileNotFoundError):
        return 0


def job_dirs(sweep):
    """The job dirs ``<job number>_<run name>``, by job number."""
    dirs = (p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    return sorted(dirs, key=lambda p: int(p.name.split("_")[0]))


def metrics(job_dir):
    return json.loads((job_dir / "metrics.json").read_text())


def test_search_space_syntax_maps_to_optuna_distributions():
    space, fixed = parse_search_space([
        "optimizer.lr=tag(log, interval(0.0001, 0.01))", "loss=choice(dice, jaccard)", "model=unet,fpn",
        "data.batch_size=range(4, 17, 4)", "trainer.max_epochs=interval(1, 5)", "seed=range(0, 1, 0.25)",
        "augment.crop_size=64", "+model.encoder_depth=5",
    ])
    assert space == {
        "optimizer.lr": FloatDistribution(0.0001, 0.01, log=True),
        "loss": CategoricalDistribution(["dice", "jaccard"]),
        "model": CategoricalDistribution(["unet", "fpn"]),
        "data.batch_size": IntDistribution(4, 16, step=4),  # 4, 8, 12, 16: range's stop is excluded
        "trainer.max_epochs": FloatDistribution(1.0, 5.0),  # Hydra: intervals are floats
        "seed": FloatDistribution(0.0, 0.75, step=0.25),
    }
    assert fixed == {"augment.crop_size": "64", "+model.encoder_depth": "5"}
    assert grid_values("data.batch_size", space["data.batch_size"]) == [4, 8, 12, 16]
    # The command line comes after hydra.sweeper.params and wins.
    assert parse_search_space(["loss=choice(dice, jaccard)", "loss=dice"]) == ({}, {"loss": "dice"})
    with pytest.raises(ValueError, match="optimizer.lr: the grid sampler needs"):
        grid_values("optimizer.lr", space["optimizer.lr"])


def test_trials_launch_in_runs_of_consecutive_job_numbers():
    numbered = [(n, f"t{n}") for n in (8, 3, 4, 9, 7)]
    assert [[t for _, t in block] for block in consecutive_blocks(numbered)] == [["t3", "t4"], ["t7", "t8", "t9"]]


class ScriptedLauncher:
    """Stands in for Hydra's launcher: each job "returns" the next scripted value (an exception
    raises from the launch itself); records each launch's first job number and overrides."""

    def __init__(self, values):
        self.values = iter(values)
        self.launches: list[tuple[int, list]] = []

    def launch(self, job_overrides, initial_job_idx):
        self.launches.append((initial_job_idx, [list(o) for o in job_overrides]))
        returns = []
        for overrides in job_overrides:
            value = next(self.values)
            if isinstance(value, Exception):
                raise value
            returns.append(JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=value))
        return returns


def scripted_search(tmp_path, values, **settings) -> tuple[Search, ScriptedLauncher]:
    settings = {"direction": None, "study_name": "s", "storage": None, "n_trials": 4, "n_jobs": 1,
                "max_failures": None, "params": {"optimizer.lr": "interval(0.001, 0.01)"}, **settings}
    sweeper = OptunaSweeper(sampler=OmegaConf.create({"_target_": "optuna.samplers.RandomSampler", "seed": 0}),
                            pruner=None, **settings)
    sweeper.config = OmegaConf.create({"optimized_metric": "val/iou", "monitor_mode": "max"})
    sweeper.sweep_dir, sweeper.launcher = tmp_path, ScriptedLauncher(values)
    return Search(sweeper, sweeper.space_overrides(["model=unet"])), sweeper.launcher


def test_failures_are_told_fail_and_max_failures_ends_the_search(tmp_path):
    search_, launcher = scripted_search(tmp_path, [0.5, float("nan"), RuntimeError("no node"), 0.9, None, 0.1],
                                        n_trials=10, max_failures=3)
    search_.run()
    trials = search_.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL,
                                         TrialState.COMPLETE, TrialState.FAIL]  # the third failure ends it
    assert trials[1].user_attrs["error"] == "optimized_metric=val/iou is nan"
    assert trials[2].user_attrs["error"] == "launch failed: RuntimeError: no node"
    assert "not a number for optimized_metric=val/iou" in trials[4].user_attrs["error"]
    # Job number = trial number, and the job is told its trial through its environment.
    assert [first for first, _ in launcher.launches] == [0, 1, 2, 3, 4]
    for number, (_, (overrides,)) in enumerate(launcher.launches):
        assert "model=unet" in overrides and f"++hydra.job.env_set.SEGSWEEP_OPTUNA_TRIAL='{number}'" in overrides
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["best_value"] == 0.9 and results["best_trial"] == 3
    assert results["trials"]["complete"] == 2 and results["trials"]["fail"] == 3


def dead_pid() -> int:
    """The pid of a process that has ended (a search killed with SIGKILL)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


@pytest.mark.parametrize("storage", [None, "sqlite:///{}/study.db"])  # the journal file, a database
def test_an_interrupted_trial_is_retried_in_its_own_job_dir(tmp_path, storage):
    storage = storage and storage.format(tmp_path)
    search_, _ = scripted_search(tmp_path, [], n_trials=2, storage=storage)
    interrupted = search_.study.ask(search_.distributions)  # trial 0: its worker was killed
    interrupted.set_user_attr(OWNER_ATTR, {"host": socket.gethostname(), "pid": dead_pid(), "worker": "gone"})
    search_.study.tell(search_.study.ask(search_.distributions), 0.4)  # trial 1 completed
    resumed, launcher = scripted_search(tmp_path, [0.5, 0.7], n_trials=3, storage=storage)
    resumed.run()
    trials = resumed.study.get_trials()
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.FAIL), (1, TrialState.COMPLETE),
                                                     (2, TrialState.COMPLETE), (3, TrialState.COMPLETE)]
    assert trials[0].user_attrs["error"].startswith("interrupted") and trials[2].user_attrs[RETRY_ATTR] == 0
    assert trials[2].params == interrupted.params  # the same trial, again
    assert [first for first, _ in launcher.launches] == [0, 2]  # job dirs 0 (resumed) and 2: n_trials is the total
    assert f"optimizer.lr={interrupted.params['optimizer.lr']}" in launcher.launches[0][1][0]
    # The seeded sampler does not draw the first trials' parameters again.
    assert len({t.params["optimizer.lr"] for t in trials}) == 3
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["trials"]["complete"] == 3


def test_a_trial_killed_before_its_parameters_were_drawn_is_retried_with_them(tmp_path):
    """The window the kill hit in a loaded run: the trial exists (RUNNING) with some parameters or
    none. It is retried, its missing parameters drawn, never completed without them."""
    search_, _ = scripted_search(tmp_path, [], n_trials=1,
                                 params={"optimizer.lr": "interval(0.001, 0.01)", "loss": "choice(dice, bce)"})
    half = optuna.trial.create_trial(state=TrialState.RUNNING, params={"loss": "dice"},
                                     distributions={"loss": CategoricalDistribution(["dice", "bce"])})
    half.datetime_start -= datetime.timedelta(seconds=STALE_S + 1)  # killed between ask and marking it
    search_.study.add_trial(half)
    resumed, launcher = scripted_search(tmp_path, [0.5], n_trials=1,
                                        params={"optimizer.lr": "interval(0.001, 0.01)", "loss": "choice(dice, bce)"})
    resumed.run()
    killed, retry = resumed.study.get_trials()
    assert killed.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.params["loss"] == "dice" and 0.001 <= retry.params["optimizer.lr"] <= 0.01
    (first, (overrides,)), = launcher.launches
    assert first == 0 and "loss=dice" in overrides and any(o.startswith("optimizer.lr=") for o in overrides)


def test_a_worker_that_loses_the_race_for_the_last_place_runs_nothing(tmp_path):
    """Two workers on one study, n_trials=2: both counted one place left and asked at once. Trial
    numbers are given out atomically; the later one is surplus: told FAIL, never launched, and
    counted nowhere. The workers' seeded samplers draw different points."""
    a, launched_a = scripted_search(tmp_path, [0.5, 0.6], n_trials=2)
    b, launched_b = scripted_search(tmp_path, [0.7], n_trials=2)
    a.study.tell(a.claim_batch()[0], 0.5)  # trial 0
    b.room = lambda: 1  # B counted before A asked
    (trial_a,) = a.claim_batch()  # trial 1: the last place
    assert b.claim_batch() == []  # trial 2: surplus
    surplus = b.study.get_trials()[2]
    assert surplus.state == TrialState.FAIL and "n_trials=2 were taken" in surplus.user_attrs[SURPLUS_ATTR]
    a.study.tell(trial_a, 0.6)
    a.write_results()
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["trials"]["complete"] == 2 and results["trials"]["fail"] == 0  # the surplus one counts nowhere
    draws = [t.params["optimizer.lr"] for t in a.study.get_trials()[:2]]
    assert draws[0] != draws[1]


def test_a_seeded_search_draws_the_same_points_again(tmp_path):
    runs = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        search_, _ = scripted_search(tmp_path / name, [0.1, 0.2, 0.3], n_trials=3)
        search_.run()
        runs.append([t.params["optimizer.lr"] for t in search_.study.get_trials()])
    assert runs[0] == runs[1] and len(set(runs[0])) == 3


def test_the_best_trials_are_reevaluated_with_other_seeds_once(tmp_path):
    # Search: trials 0-2 (0.5, 0.9, 0.7); then the top 2 (trials 1, 2) with seeds 7 and 8.
    values = [0.5, 0.9, 0.7, 0.95, 0.85, 0.6, float("nan")]
    search_, launcher = scripted_search(tmp_path, values, n_trials=3, reevaluate_top_k=2, reevaluate_seeds=[7, 8])
    search_.run()
    trials = search_.study.get_trials()
    assert [first for first, _ in launcher.launches] == [0, 1, 2, 3, 4, 5, 6]  # after the search's numbers
    repeats = [(t.user_attrs["reevaluates_trial"], t.user_attrs["seed"]) for t in trials[3:]]
    assert repeats == [(1, 7), (1, 8), (2, 7), (2, 8)]
    for (repeated, seed), trial, (_, (overrides,)) in zip(repeats, trials[3:], launcher.launches[3:], strict=True):
        assert trial.params == trials[repeated].params and f"seed={seed}" in overrides
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["best_trial"] == 1 and results["best_value"] == 0.9  # a lucky seed is not the search's best
    assert results["reevaluated"] == {1: {"seeds": [7, 8], "values": [0.95, 0.85]}, 2: {"seeds": [7], "values": [0.6]}}
    again, launcher = scripted_search(tmp_path, [], n_trials=3, reevaluate_top_k=2, reevaluate_seeds=[7, 8])
    again.run()  # re-running the finished search launches nothing (the failed one is not retried)
    assert launcher.launches == [] and len(again.study.get_trials()) == 7


def test_a_run_whose_loss_goes_nan_fails_at_once_with_the_epoch(make_cfg, tmp_path):
    cfg = make_cfg("optimizer.lr=1e30", "trainer.max_epochs=3")
    with pytest.raises(DivergedError, match=r"^diverged at epoch 0 \(step \d\): training loss is nan"):
        run_job(train, cfg)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "failed" and "diverged at epoch 0" in record["error"]


def test_failed_and_diverged_trials_are_recorded_and_the_search_goes_on(tmp_path):
    # Grid over 2 x 2: one good trial, one whose loss goes NaN (lr 1e30), two with an encoder smp
    # does not have (the model fails to build inside the job).
    sweep = search(tmp_path, "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=10", "model=unet",
                   f"encoder={TINY_ENCODER}", "optimizer.lr=0.003,1e30", f"encoder.name={TINY_ENCODER},no_such_encoder")
    trials = load_study(sweep).get_trials()
    assert len(trials) == 4  # the grid's size, not n_trials
    states = {(t.params["optimizer.lr"], t.params["encoder.name"]): t.state for t in trials}
    assert states[(0.003, TINY_ENCODER)] == TrialState.COMPLETE
    assert [s for key, s in states.items() if key != (0.003, TINY_ENCODER)] == [TrialState.FAIL] * 3
    errors = {(t.params["optimizer.lr"], t.params["encoder.name"]): t.user_attrs.get("error") for t in trials}
    assert errors[(1e30, TINY_ENCODER)].startswith("DivergedError: diverged at epoch 0")
    assert "no_such_encoder" in errors[(0.003, "no_such_encoder")]
    assert [metrics(d)["status"] for d in job_dirs(sweep)].count("failed") == 3
    board = pd.read_csv(sweep / "leaderboard.csv")
    assert sorted(board["status"]) == ["completed", "failed", "failed", "failed"]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["trials"]["fail"] == 3 and results["best_value"] == pytest.approx(board["best val/iou"].max())


def test_median_pruner_stops_trials_of_a_bad_region_early(tmp_path):
    """lr=10 does not give NaN (BatchNorm) but a validation loss of ~1e14 after one epoch: once a
    good trial completed, the median pruner stops such trials after their first epoch."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    # The study exists before the search (as a user warm-starting it would make it): the good
    # trial runs first, so what the pruner compares with does not hang on the sampler's luck.
    study = optuna.create_study(study_name="segsweep", direction="minimize",
                                storage=JournalStorage(JournalFileBackend(str(sweep / "optuna_journal.log"))))
    study.enqueue_trial({"optimizer.lr": 0.003})
    study.enqueue_trial({"optimizer.lr": 10})
    search(tmp_path, "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1",
           "hydra.sweeper.n_trials=2", "optimizer.lr=0.003,10", "trainer.max_epochs=3",
           "optimized_metric=val/loss", "monitor_mode=min", "logger=csv", sweep=sweep)
    good, bad = load_study(sweep).get_trials()
    assert good.state == TrialState.COMPLETE and sorted(good.intermediate_values) == [0, 1, 2]
    assert bad.state == TrialState.PRUNED and sorted(bad.intermediate_values) == [0]
    assert bad.intermediate_values[0] > good.intermediate_values[0]
    good_run, bad_run = (metrics(d) for d in job_dirs(sweep))
    assert good_run["status"] == "completed" and good_run["epochs"] == 3
    assert bad_run["status"] == "pruned" and bad_run["pruned_at_epoch"] == 0 and bad_run["epochs"] == 1
    assert len(bad_run["history"]) == 1 and "test/loss" not in bad_run["final"]  # not tested
    logged = pd.read_csv(job_dirs(sweep)[1] / "csv" / "version_0" / "metrics.csv")  # what every logger gets
    assert logged["optuna/pruned_at_epoch"].dropna().tolist() == [0]
    board = pd.read_csv(sweep / "leaderboard.csv")
    assert list(board["status"]) == ["completed", "pruned"]
    assert yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"] == pytest.approx(
        board["best val/loss"].iloc[0])


def test_a_killed_search_resumes_to_exactly_n_trials(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["hydra.sweeper.n_trials=4", "optimizer.lr=interval(0.001, 0.01)", "hydra.sweeper.sampler.seed=3"]
    first = subprocess.Popen(search_command(sweep, *args), cwd=tmp_path, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None:
            if completed_trials(sweep) >= 2:
                break
            time.sleep(0.2)
        assert first.poll() is None, "the search ended before it could be killed"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the search and every process it started
        first.wait()
    assert completed_trials(sweep) == 2

    search(tmp_path, *args, sweep=sweep)
    from hydra_plugins.segsweep_optuna_sweeper._search import job_numbers

    study = load_study(sweep)
    jobs = job_numbers(study.get_trials(), 4)
    latest = {jobs[t.number]: t for t in sorted(counted_trials(study, 4), key=lambda t: t.number)}
    trials = [latest[job] for job in sorted(latest)]  # each job's last trial (a retry replaces the interrupted)
    assert sorted(latest) == [0, 1, 2, 3] and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.params["optimizer.lr"] for t in trials}) == 4  # no repeats of the first draws
    # The trial the kill cut short is recorded as interrupted, and retried in its own job dir.
    interrupted = [t for t in study.get_trials() if jobs[t.number] is not None and t not in trials]
    assert all(t.state == TrialState.FAIL and t.user_attrs["error"].startswith("interrupted") for t in interrupted)
    dirs = job_dirs(sweep)
    assert [int(d.name.split("_")[0]) for d in dirs] == [0, 1, 2, 3]
    for trial, job_dir in zip(trials, dirs, strict=True):
        assert metrics(job_dir)["status"] == "completed"
        assert f"optimizer.lr={trial.params['optimizer.lr']}" in metrics(job_dir)["overrides"]


def test_parallel_trials_report_to_the_study_and_the_best_matches_the_leaderboard(tmp_path):
    sweep = search(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2",
                   "hydra.sweeper.n_trials=2", "optimizer.lr=interval(0.001, 0.01)", "trainer.max_epochs=2")
    trials = load_study(sweep).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    # Each job (its own joblib worker process) reported every epoch to its own trial.
    for trial, job_dir in zip(trials, job_dirs(sweep), strict=True):
        history = metrics(job_dir)["history"]
        assert trial.intermediate_values == {row["epoch"]: pytest.approx(row["val/iou"]) for row in history}
    board = pd.read_csv(sweep / "leaderboard.csv")
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(board["best val/iou"].iloc[0])
    assert results["best_value"] == pytest.approx(max(t.value for t in trials))


@pytest.mark.parametrize("search", ["optuna", "optuna_loss_weights"])
@pytest.mark.parametrize("task", ["binary", "instance"])
def test_shipped_searches_sample_existing_keys_and_optimise_the_tasks_metric(search, task):
    """Each key of a shipped search space is in the composed config (a stale key would fail every
    trial), and the study optimises the task's own metric in its monitor_mode direction."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("train", overrides=[f"hparams_search={search}", f"task={task}"], return_hydra_config=True)
    sweeper = OptunaSweeper(**{k: v for k, v in cfg.hydra.sweeper.items() if k not in ("_target_", "_recursive_")})
    sweeper.config = cfg
    space, _ = parse_search_space(sweeper.space_overrides([]))
    for key, distribution in space.items():
        if isinstance(distribution, CategoricalDistribution) and "." not in key:  # a config group
            assert set(distribution.choices) <= set(GROUP_CHOICES[key]), key
        else:
            assert OmegaConf.select(cfg, key, default="missing") != "missing", key
    assert cfg.optimized_metric == {"binary": "val/iou", "instance": "val/ap50"}[task]
    assert sweeper.study_direction() == "maximize"
    GlobalHydra.instance().clear()


@pytest.mark.slow  # three processes (~50 s of CPU); the default suite runs DDP trials in test_distributed.py
def test_a_pruned_ddp_trial_stops_on_every_rank(tmp_path):
    """Under DDP rank zero asks the pruner and broadcasts the answer: both ranks stop after the
    same epoch (no rank hangs in the next collective) and the trial is recorded as pruned."""
    sweep = search(tmp_path, "trainer=ddp_cpu", "hydra.sweeper.n_trials=1",
                   "trainer.max_epochs=3", "data.splits.val.num_images=4", "data.eval_batch_size=2",
                   "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=2.0")  # IoU < 2: always pruned
    (trial,) = load_study(sweep).get_trials()
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [0]
    (job_dir,) = job_dirs(sweep)
    run = metrics(job_dir)
    assert run["status"] == "pruned" and run["epochs"] == 1 and run["pruned_at_epoch"] == 0


def test_direction_setting_beats_monitor_mode_and_a_study_keeps_its_direction(tmp_path):
    search_, _ = scripted_search(tmp_path, [], direction="minimize")  # the app's monitor_mode is max
    assert search_.study.direction == optuna.study.StudyDirection.MINIMIZE
    with pytest.raises(ValueError, match="study 's' in .*optuna_journal.log was created to minimize"):
        scripted_search(tmp_path, [])  # the same study, now asked to maximize


@pytest.mark.parametrize("group, name", [*(("sampler", n) for n in ("tpe", "random", "cmaes", "qmc", "nsgaii")),
                                         *(("pruner", n) for n in ("nop", "median", "percentile",
                                                                    "successive_halving", "hyperband"))])
def test_every_shipped_sampler_and_pruner_builds(group, name):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("train", overrides=["hparams_search=optuna", f"hydra/sweeper/{group}={name}"],
                      return_hydra_config=True)
    built = instantiate(cfg.hydra.sweeper[group])
    assert isinstance(built, optuna.samplers.BaseSampler if group == "sampler" else optuna.pruners.BasePruner)
    GlobalHydra.instance().clear()


def counted_trials(study, n_trials: int) -> list:
    """The trials that took a place in the search (surplus ones lost a race and never ran)."""
    from hydra_plugins.segsweep_optuna_sweeper._search import job_numbers

    jobs = job_numbers(study.get_trials(), n_trials)
    return [t for t in study.get_trials() if jobs[t.number] is not None]


def test_two_search_workers_on_one_study_run_exactly_n_trials(tmp_path):
    """Two `segsweep-train -m hparams_search=optuna` processes started together on one sweep dir
    (one study, in its journal file), the median pruner on: together they run exactly n_trials
    trials with distinct parameters, one job in each job dir, and both end well."""
    sweep = tmp_path / "sweep"
    args = ["hydra.sweeper.n_trials=4", "optimizer.lr=interval(0.001, 0.01)", "hydra.sweeper.sampler.seed=3",
            "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1", "trainer.max_epochs=2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    workers = [subprocess.Popen(search_command(sweep, *args), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    trials = counted_trials(load_study(sweep), 4)
    assert len(trials) == 4 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert len({t.params["optimizer.lr"] for t in trials}) == 4  # the two workers drew different points
    dirs = job_dirs(sweep)
    assert [int(d.name.split("_")[0]) for d in dirs] == [0, 1, 2, 3]
    assert not list(sweep.glob("*/previous"))  # no job dir was started twice
    lrs = sorted(t.params["optimizer.lr"] for t in trials)
    ran = sorted(float(next(o for o in metrics(d)["overrides"] if o.startswith("optimizer.lr=")).split("=")[1])
                 for d in dirs)
    assert ran == pytest.approx(lrs)
    assert all(metrics(d)["status"] in ("completed", "pruned") for d in dirs)


def dashboard_studies(storage: str, timeout: float = 120) -> list[str]:
    """The study names ``optuna-dashboard <storage>`` lists (its HTTP API), the dashboard started
    on a free port and stopped after."""
    import shutil
    import urllib.request

    port = free_port()
    dashboard = subprocess.Popen([shutil.which("optuna-dashboard", path=os.path.dirname(sys.executable)), storage,
                                  "--port", str(port), "--host", "127.0.0.1", "--quiet"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                    return [study["study_name"] for study in json.loads(answer.read())["study_summaries"]]
            except OSError:
                assert dashboard.poll() is None, dashboard.stdout.read()
                assert time.time() < deadline, "optuna-dashboard did not answer"
                time.sleep(0.3)
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_optuna_dashboard_opens_a_search_in_its_journal_file(tmp_path):
    """What the README tells a user watching a running search: optuna-dashboard <sweep dir>/optuna_journal.log."""
    search_, _ = scripted_search(tmp_path, [0.5], n_trials=1)
    search_.run()
    assert dashboard_studies(str(tmp_path / "optuna_journal.log")) == ["s"]
