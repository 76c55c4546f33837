"""One DDP job = its own ranks: how segsweep runs multi-process training inside Hydra sweeps.

Lightning's own launcher starts ranks 1..n-1 by re-running the original command line. Under
``segsweep-train -m ...`` that command is the whole sweep, so every rank would start its own
multirun (and Optuna would sample different parameters per rank). Instead, the Hydra job that
wants ``n`` local processes plans the job dir once (``segsweep.jobs.plan``), writes its fully
resolved config and that plan to ``<job dir>/ddp/`` and starts ``n`` workers
(``python -m segsweep.jobs.ddp <config>``) with ``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_PORT`` set.
Lightning sees ``LOCAL_RANK`` and treats the processes as launched for it. The job dir,
metrics.json and W&B run (rank zero) belong to that one job; the Hydra job waits for its ranks and
returns rank zero's metric to the sweeper. When a rank fails it writes its error and traceback
to ``ddp/rank<k>.error.json``; the launcher stops the other ranks (which would otherwise wait for
it in a collective) and raises that first error. Cluster launchers (SLURM via submitit) start
their own tasks, one per rank; then nothing is launched here.
"""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from omegaconf import DictConfig, OmegaConf

from segsweep.jobs.errors import RankFailed, describe_error
from segsweep.jobs.files import METRICS_FILE, load_json, read_json, write_json
from segsweep.jobs.plan import JobPlan
from segsweep.jobs.records import hydra_context
from segsweep.jobs.run import run_job

FAILURE_GRACE_S = 10.0  # how long the other ranks may take to end after one failed


def local_process_count(trainer_cfg: DictConfig) -> int:
    """How many local processes the trainer config asks for (1 unless a DDP strategy)."""
    strategy = str(trainer_cfg.get("strategy", "auto"))
    if "ddp" not in strategy or "spawn" in strategy:
        return 1
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, (list, tuple)) or hasattr(devices, "__len__") and not isinstance(devices, str):
        return len(devices)
    if trainer_cfg.get("accelerator") == "cpu":
        raise ValueError(f"trainer.devices={devices!r}: give the number of CPU processes for DDP")
    return max(torch.cuda.device_count(), 1)


def needs_launch(cfg: DictConfig) -> bool:
    launched = "LOCAL_RANK" in os.environ or SLURMEnvironment.detect() or TorchElasticEnvironment.detect()
    return not launched and local_process_count(cfg.trainer) > 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_ranks(cfg: DictConfig, job: str, plan: JobPlan) -> dict:
    """Run ``job`` (``"module:function"``, e.g. ``"segsweep.train:train"``) with ``plan`` on this
    job's own ranks; return rank zero's result (the metrics.json payload)."""
    output_dir = Path(cfg.paths.output_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    config["job_context"] = hydra_context()  # Hydra's runtime is not there in the workers
    config["launch_job"] = job
    config_path = output_dir / "ddp" / "config.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    for stale in config_path.parent.glob("rank*.error.json"):  # from an earlier attempt of this job
        stale.unlink()
    OmegaConf.save(OmegaConf.create(config), config_path)
    write_json(plan_path(config_path), plan.to_dict())

    n = local_process_count(cfg.trainer)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": str(n), "NODE_RANK": "0"}
    ranks = []
    for rank in range(n):
        # Rank zero talks to the console; the others write their own logs in the job dir.
        out = None if rank == 0 else open(config_path.parent / f"rank{rank}.log", "w")  # noqa: SIM115
        ranks.append(subprocess.Popen(
            [sys.executable, "-m", "segsweep.jobs.ddp", str(config_path)],
            env={**env, "LOCAL_RANK": str(rank), "RANK": str(rank)}, stdout=out, stderr=out,
        ))
    codes = wait_for_ranks(ranks)
    failure = first_rank_failure(config_path.parent)
    if failure:
        raise RankFailed(failure["rank"], failure["error"], failure["traceback"])
    metrics_path = output_dir / METRICS_FILE
    if any(codes) or not metrics_path.is_file():
        raise RuntimeError(
            f"DDP ranks exited with codes {codes}; see {config_path.parent}/rank*.log and the output above"
        )
    return load_json(metrics_path)


def wait_for_ranks(ranks: list[subprocess.Popen], grace_s: float = FAILURE_GRACE_S) -> list[int]:
    """Exit codes of the ranks. Once one fails the others may wait for it in a collective until the
    backend's timeout (30 minutes): they get ``grace_s`` to end on their own, then are stopped."""
    failed_at = None
    while any(process.poll() is None for process in ranks):
        if failed_at is None and any(process.poll() for process in ranks):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > grace_s:
            for process in ranks:
                if process.poll() is None:
                    process.kill()
        time.sleep(0.2)
    return [process.returncode for process in ranks]


def rank_error_path(ddp_dir: Path, rank: int) -> Path:
    return ddp_dir / f"rank{rank}.error.json"


def plan_path(config_path: Path) -> Path:
    return config_path.with_name("plan.json")


def first_rank_failure(ddp_dir: Path) -> dict | None:
    """The error a rank recorded first: the cause (ranks failing after it lost their peer)."""
    failures = [failure for path in sorted(ddp_dir.glob("rank*.error.json")) if (failure := read_json(path))]
    return min(failures, key=lambda failure: failure["time"]) if failures else None


def worker(config_path: str) -> None:
    """One rank: run the saved job on the saved, resolved config; a failure is written to
    ``ddp/rank<k>.error.json`` for the launcher, and the rank exits with code 1."""
    cfg = OmegaConf.load(config_path)
    plan = JobPlan.from_dict(load_json(plan_path(Path(config_path))))
    module, function = cfg.launch_job.split(":")
    try:
        result = run_job(getattr(importlib.import_module(module), function), cfg, plan=plan)
    except Exception as err:  # a single run re-raises; a multirun returns a failed payload
        result = {"status": "failed", "error": describe_error(err), "traceback": traceback.format_exc()}
    failure = result.get("failed_extension") or (result if result.get("status") == "failed" else None)
    if failure:
        rank = int(os.environ.get("RANK", 0))
        write_json(rank_error_path(Path(config_path).parent, rank),  # whole or absent when read
                   {"rank": rank, "time": time.time(), "error": failure["error"], "traceback": failure["traceback"]})
        sys.exit(1)


if __name__ == "__main__":
    worker(sys.argv[1])
