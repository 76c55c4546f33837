"""A job whose ranks a cluster started: rank 0 plans once, the others follow (segsweep.jobs.ranks).
Real processes play the ranks of a SLURM job (its environment variables), all started together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from segsweep.jobs.ranks import LaunchedRank, follow, launched_rank

RANK_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from conftest import compose_config
from segsweep.jobs.run import plan_once
cfg = compose_config({job!r})
try:
    plan = plan_once(cfg)
    print(json.dumps({{"action": plan.action, "run_id": plan.run_id}}))
except Exception as err:
    print(json.dumps({{"error": type(err).__name__ + ": " + str(err)}}))
"""


def start_ranks(tmp_path: Path, job: Path, world: int, job_id: str, restart: int = 0) -> list[dict]:
    script = RANK_SCRIPT.format(tests=str(Path(__file__).parent), job=str(job))
    ranks = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path,
                              env={**os.environ, "SLURM_NTASKS": str(world), "SLURM_PROCID": str(rank),
                                   "SLURM_JOB_ID": job_id, "SLURM_RESTART_COUNT": str(restart)})
             for rank in reversed(range(world))]  # the followers first: they must wait for rank 0
    return [json.loads(rank.communicate(timeout=300)[0].strip().splitlines()[-1]) for rank in reversed(ranks)]


def test_ranks_of_a_slurm_job_follow_rank_zeros_plan(tmp_path):
    job = tmp_path / "job"
    first = start_ranks(tmp_path, job, world=2, job_id="77")
    assert [r["action"] for r in first] == ["start"] * 2 and len({r["run_id"] for r in first}) == 1
    assert not (job / "previous").exists()  # no rank moved another's files aside
    assert json.loads((job / "job.json").read_text())["run_id"] == first[0]["run_id"]


def test_every_rank_raises_rank_zeros_refusal(tmp_path):
    job = tmp_path / "job"
    start_ranks(tmp_path, job, world=2, job_id="77")
    (job / "metrics.json").write_text(json.dumps({"status": "running", "pid": os.getpid(),
                                                   "host": __import__("socket").gethostname()}))
    refused = start_ranks(tmp_path, job, world=2, job_id="78")  # another start while this process "runs" it
    assert all(r["error"].startswith("JobDirConflict:") and "being run right now" in r["error"] for r in refused)


def test_a_rank_without_rank_zeros_decision_says_where_it_waited(tmp_path):
    rank = LaunchedRank(1, 2, "slurm-5--0")
    with pytest.raises(TimeoutError, match=r"rank 1 of 2: rank 0 wrote no plan .*plan-slurm-5--0.json"):
        follow(tmp_path, rank, timeout_s=0.3)


def test_launched_rank_reads_slurm_and_torchrun():
    assert launched_rank({}) is None
    first_start = launched_rank({"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_JOB_ID": "9"})
    assert first_start.start_key == "slurm-9--0"  # no restart count before the first requeue
    assert launched_rank({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None  # one task: nothing to share
    slurm = launched_rank({"SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_JOB_ID": "9", "SLURM_ARRAY_TASK_ID": "1",
                           "SLURM_RESTART_COUNT": "3"})
    assert slurm == LaunchedRank(2, 4, "slurm-9-1-3")
    torchrun = launched_rank({"TORCHELASTIC_RUN_ID": "abc", "WORLD_SIZE": "2", "RANK": "1"})
    assert torchrun == LaunchedRank(1, 2, "torchrun-abc-0")
