"""Jobs whose ranks a cluster started (SLURM tasks, ``torchrun``): one rank plans, the others follow.

Under ``hydra/launcher=slurm`` every task of a SLURM job runs the whole Hydra job, so every rank
would plan the job dir on its own: one would move another's fresh files aside, or take its
``running`` record for another process's job and refuse. Here global rank 0 alone decides
(``segsweep.jobs.plan``) and writes its decision, for this start of the job, to
``<job dir>/.ranks/plan-<start key>.json``; the other ranks wait for that file and follow it,
its refusal included. The start key (job id, array index, restart count) differs at each start,
so a requeued job never reads the decision of its previous start.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from segsweep.jobs.files import load_json, write_json
from segsweep.jobs.plan import JobDirConflict, JobPlan

RANKS_DIR = ".ranks"
FOLLOW_TIMEOUT_S = 600.0  # how long a rank waits for rank 0's decision (rank 0 may queue for a node)


@dataclass(frozen=True)
class LaunchedRank:
    """This process as one of ``world_size`` ranks that a cluster launcher started."""

    rank: int
    world_size: int
    start_key: str  # unique to this start of the job


def launched_rank(environ=os.environ) -> LaunchedRank | None:
    """This process's rank when a cluster launcher started the job on more than one rank: SLURM
    (``SLURM_PROCID`` of ``SLURM_NTASKS``) or torchrun (``RANK`` of ``WORLD_SIZE``); else None."""
    if int(environ.get("SLURM_NTASKS", 1)) > 1 and "SLURM_PROCID" in environ:
        # SLURM sets SLURM_RESTART_COUNT from the first requeue on; SLURM_ARRAY_TASK_ID in arrays only.
        key = "-".join([environ.get("SLURM_JOB_ID", ""), environ.get("SLURM_ARRAY_TASK_ID", ""),
                        environ.get("SLURM_RESTART_COUNT") or "0"])
        return LaunchedRank(int(environ["SLURM_PROCID"]), int(environ["SLURM_NTASKS"]), f"slurm-{key}")
    if "TORCHELASTIC_RUN_ID" in environ and int(environ.get("WORLD_SIZE", 1)) > 1:
        key = f"{environ['TORCHELASTIC_RUN_ID']}-{environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        return LaunchedRank(int(environ["RANK"]), int(environ["WORLD_SIZE"]), f"torchrun-{key}")
    return None


def decision_path(job_dir: str | Path, start_key: str) -> Path:
    return Path(job_dir) / RANKS_DIR / f"plan-{start_key}.json"


def share(job_dir: str | Path, rank: LaunchedRank, plan: JobPlan | None, error: Exception | None = None) -> None:
    """Rank 0: write its decision (a plan, or the refusal the other ranks must raise too)."""
    decision = {"plan": plan.to_dict()} if plan is not None else {"error": str(error)}
    write_json(decision_path(job_dir, rank.start_key), decision)


def follow(job_dir: str | Path, rank: LaunchedRank, timeout_s: float = FOLLOW_TIMEOUT_S) -> JobPlan:
    """A rank other than 0: rank 0's plan for this start of the job, once it is written."""
    path = decision_path(job_dir, rank.start_key)
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {rank.rank} of {rank.world_size}: rank 0 wrote no plan for this job to {path} "
                               f"within {timeout_s:.0f} s (did it fail to start? see its log)")
        time.sleep(0.2)
    decision = load_json(path)
    if "error" in decision:
        raise JobDirConflict(decision["error"])
    return JobPlan.from_dict(decision["plan"])
