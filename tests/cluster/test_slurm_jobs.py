"""segsweep on a real SLURM cluster and a real PostgreSQL server (started by tests/cluster/servers.py):
sweeps of multi-rank CPU jobs, a requeued job, multi-node DDP, searches sharing a study, and
optuna-dashboard on that study. CPU only: DDP over gloo, tiny models.

Expected values come from a second implementation: the same job run by segsweep's own local DDP
launcher (trainer=ddp_cpu, no SLURM), or a single process evaluating the job's checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parents[1]
# Odd numbers of validation and test images on 2 ranks: a rank that counted a padded image twice
# would show in the comparison with one process.
TINY = ["model=classic_unet", "model.base_width=8", "model.depth=2", "data.dataset.image_size=64",
        "data.splits.train.num_images=8", "data.splits.val.num_images=3", "data.splits.test.num_images=3",
        "data.batch_size=2", "data.eval_batch_size=2", "augment.crop_size=64", "logger=csv", "callbacks=default",
        "~callbacks.progress_bar", "~callbacks.image_logger", "+trainer.enable_model_summary=false",
        "scheduler=none"]
ON_SLURM = ["hydra/launcher=slurm_cpu", "trainer=slurm_cpu", "hydra.launcher.timeout_min=30"]


def segsweep(tmp_path: Path, env: dict, *args: str, timeout: float = 900, background: bool = False):
    command = [sys.executable, "-m", "segsweep.train", "-m", *args]
    env = {**env, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    if background:
        return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def job_dirs(sweep: Path) -> list[Path]:
    numbered = (p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    return sorted(numbered, key=lambda p: int(p.name.split("_")[0]))


def metrics(job: Path) -> dict:
    try:
        return json.loads((job / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def weights(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def single_process_test_metrics(make_cfg, job: Path) -> dict:
    from segsweep.eval import evaluate

    best = metrics(job)["best_checkpoint"]
    cfg = make_cfg("trainer=cpu", f"ckpt_path={best}", "split=test", config_name="eval", fast=False)
    return evaluate(cfg)["final"]


def assert_exact(job: Path, single: dict) -> None:
    for name in ("test/iou", "test/dice", "test/acc"):  # integer counts: exact whatever the sharding
        assert single[name] == metrics(job)["final"][name], name


@pytest.mark.timeout(1200)
def test_a_two_job_sweep_of_two_ranks_per_job_completes_and_is_ranked(slurm_cluster, tmp_path, make_cfg):
    sweep = tmp_path / "sweep"
    segsweep(tmp_path, slurm_cluster.env(), *ON_SLURM, *TINY, "trainer.max_epochs=2", "loss=dice,bce_dice",
             f"hydra.sweep.dir={sweep}")
    jobs = job_dirs(sweep)
    assert [metrics(j)["status"] for j in jobs] == ["completed", "completed"]
    for job in jobs:
        assert len(list((job / ".ranks").glob("plan-slurm-*.json"))) == 1  # planned once, by rank 0
        assert not (job / "previous").exists()  # no rank moved another's files aside
        checkpoints = sorted(p.name for p in (job / "checkpoints").iterdir())
        assert len(checkpoints) == 2 and "last.ckpt" in checkpoints  # the best and the last, written once
    logs = sorted(p.name for p in (sweep / ".submitit").rglob("*_log.out"))
    assert len([name for name in logs if name.endswith("_0_log.out")]) == 2  # task 0 of each job
    assert len([name for name in logs if name.endswith("_1_log.out")]) == 2  # and task 1: two ranks
    assert (sweep / "leaderboard.csv").read_text().count("completed") == 2
    assert_exact(jobs[0], single_process_test_metrics(make_cfg, jobs[0]))


@pytest.mark.timeout(1800)
def test_a_requeued_job_resumes_identical_to_an_uninterrupted_run(slurm_cluster, tmp_path):
    """``scontrol requeue`` in the middle of the 3rd of 4 epochs: SLURM kills the job's ranks and
    starts it again; it resumes from its last checkpoint and ends as the same job run without a
    stop by segsweep's local DDP launcher (the same 2 ranks, no SLURM)."""
    args = [*TINY, "trainer.max_epochs=4", "data.splits.train.num_images=24"]
    reference = tmp_path / "reference"
    segsweep(tmp_path, dict(os.environ), "trainer=ddp_cpu", *args, f"hydra.sweep.dir={reference}")
    sweep = tmp_path / "sweep"
    process = segsweep(tmp_path, slurm_cluster.env(), *ON_SLURM, *args, f"hydra.sweep.dir={sweep}", background=True)
    deadline = time.time() + 900
    while not (sweep.is_dir() and job_dirs(sweep) and len(metrics(job_dirs(sweep)[0]).get("history") or []) >= 2):
        assert process.poll() is None, process.stdout.read()[-5000:]
        assert time.time() < deadline, "timed out waiting for the job's 2nd epoch"
        time.sleep(0.2)
    (job_id,) = slurm_cluster.run("squeue", "-h", "-o", "%i").stdout.split()
    slurm_cluster.run("scontrol", "requeue", job_id)
    out, _ = process.communicate(timeout=900)
    assert process.returncode == 0, out[-5000:]

    (job,) = job_dirs(sweep)
    (expected,) = job_dirs(reference)
    resumed, straight = metrics(job), metrics(expected)
    assert resumed["status"] == "completed" and resumed["attempts"] == 2
    assert resumed["history"] == straight["history"] and resumed["best"] == straight["best"]
    assert resumed["final"] == straight["final"] and resumed["global_step"] == straight["global_step"]
    assert [row["epoch"] for row in resumed["history"]] == [0, 1, 2, 3]
    for a, b in zip(weights(job / "checkpoints" / "last.ckpt").values(),
                    weights(expected / "checkpoints" / "last.ckpt").values(), strict=True):
        assert torch.equal(a, b)
    # Rank 0 planned each start of the job: the first (restart count 0) and the requeued one (1).
    assert sorted(p.stem.rsplit("-", 1)[1] for p in (job / ".ranks").glob("plan-*.json")) == ["0", "1"]


@pytest.mark.timeout(1800)
def test_a_two_node_job_of_two_ranks_each_equals_one_process_and_resumes(slurm_cluster_2nodes, tmp_path, make_cfg):
    """2 nodes x 2 ranks (two slurmd daemons on this host): one metrics.json and one set of
    checkpoints, test metrics equal to one process evaluating the checkpoint, and more epochs
    later the job continues from its last checkpoint."""
    sweep = tmp_path / "sweep"
    env = {**slurm_cluster_2nodes.env(), "MASTER_ADDR": "127.0.0.1"}  # node1/node2 do not resolve here
    args = [*ON_SLURM, "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=2", *TINY,
            "data.splits.val.num_images=5", "data.splits.test.num_images=5", f"hydra.sweep.dir={sweep}"]
    segsweep(tmp_path, env, *args, "trainer.max_epochs=1")
    (job,) = job_dirs(sweep)
    first = metrics(job)
    assert first["status"] == "completed" and first["epochs"] == 1
    assert len(list((job / "checkpoints").glob("*.ckpt"))) == 2  # best and last, written once
    logs = sorted(p.name for p in (sweep / ".submitit").rglob("*_log.out"))
    assert len(logs) == 4  # four tasks
    assert_exact(job, single_process_test_metrics(make_cfg, job))

    segsweep(tmp_path, env, *args, "trainer.max_epochs=2")
    extended = metrics(job)
    assert extended["status"] == "completed" and extended["epochs"] == 2 and extended["attempts"] == 2
    assert [row["epoch"] for row in extended["history"]] == [0, 1]
    assert extended["history"][0] == first["history"][0]


def counted_trials(storage: str, n_trials: int) -> list:
    import optuna

    from hydra_plugins.segsweep_optuna_sweeper._search import job_numbers

    study = optuna.load_study(study_name="segsweep", storage=storage)
    jobs = job_numbers(study.get_trials(), n_trials)
    return [t for t in study.get_trials() if jobs[t.number] is not None]


@pytest.mark.timeout(1800)
def test_two_search_workers_share_one_postgresql_study(postgres_url, tmp_path):
    """Two `segsweep-train -m hparams_search=optuna` processes, one PostgreSQL study, the median
    pruner on: exactly n_trials trials with distinct parameters, one job per job dir."""
    sweep = tmp_path / "sweep"
    args = ["hparams_search=optuna", "hydra.sweeper.params=null", f"hydra.sweeper.storage={postgres_url}",
            "hydra.sweeper.n_trials=4", "optimizer.lr=interval(0.001, 0.01)", "hydra.sweeper.sampler.seed=5",
            "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1", "trainer=cpu",
            "trainer.max_epochs=2", *TINY, f"hydra.sweep.dir={sweep}"]
    workers = [segsweep(tmp_path, dict(os.environ), *args, background=True) for _ in range(2)]
    outputs = [worker.communicate(timeout=1200)[0] for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    trials = counted_trials(postgres_url, 4)
    assert len(trials) == 4 and len({t.params["optimizer.lr"] for t in trials}) == 4
    assert [int(d.name.split("_")[0]) for d in job_dirs(sweep)] == [0, 1, 2, 3]
    assert not list(sweep.glob("*/previous"))
    assert all(metrics(d)["status"] in ("completed", "pruned") for d in job_dirs(sweep))


@pytest.mark.timeout(300)
def test_optuna_dashboard_opens_a_study_in_postgresql(postgres_url):
    import optuna
    from test_optuna import dashboard_studies

    study = optuna.create_study(study_name="dashboard-check", storage=postgres_url, direction="maximize",
                                load_if_exists=True)
    study.add_trial(optuna.trial.create_trial(value=0.5, params={"x": 1.0},
                                              distributions={"x": optuna.distributions.FloatDistribution(0, 2)}))
    assert "dashboard-check" in dashboard_studies(postgres_url)
