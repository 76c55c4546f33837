"""One DDP job = its own ranks: how segsweep runs multi-process training inside Hydra sweeps.

Lightning's own launcher starts ranks 1..n-1 by re-running the original command line. Under
``segsweep-train -m ...`` that command is the whole sweep, so every rank would start its own
multirun (and Optuna would sample different parameters per rank). Instead, the Hydra job that
wants ``n`` local processes writes its fully resolved config to ``<job dir>/ddp/config.yaml`` and
starts ``n`` workers (``python -m segsweep.launch <config>``) with ``LOCAL_RANK``/``WORLD_SIZE``/
``MASTER_PORT`` set. Lightning sees ``LOCAL_RANK`` and treats the processes as launched for it.
The job dir, metrics.json and W&B run (rank zero) belong to that one job; the Hydra job waits for
its ranks and returns rank zero's metric to the sweeper. Cluster launchers (SLURM via submitit)
start their own tasks, one per rank; then nothing is launched here.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from omegaconf import DictConfig, OmegaConf

from segsweep.utils.run import METRICS_FILE, hydra_context, run_job


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


def launch(cfg: DictConfig, job: str) -> dict:
    """Run ``job`` (``"module:function"``, e.g. ``"segsweep.train:train"``) on this job's own
    ranks; return rank zero's result (the metrics.json payload)."""
    output_dir = Path(cfg.paths.output_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    config["job_context"] = hydra_context()  # Hydra's runtime is not there in the workers
    config["launch_job"] = job
    config_path = output_dir / "ddp" / "config.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(config), config_path)

    n = local_process_count(cfg.trainer)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": str(n), "NODE_RANK": "0"}
    ranks = []
    for rank in range(n):
        # Rank zero talks to the console; the others write their own logs in the job dir.
        out = None if rank == 0 else open(config_path.parent / f"rank{rank}.log", "w")  # noqa: SIM115
        ranks.append(subprocess.Popen(
            [sys.executable, "-m", "segsweep.launch", str(config_path)],
            env={**env, "LOCAL_RANK": str(rank), "RANK": str(rank)}, stdout=out, stderr=out,
        ))
    codes = [process.wait() for process in ranks]
    metrics_path = output_dir / METRICS_FILE
    if any(codes) or not metrics_path.is_file():
        raise RuntimeError(
            f"DDP ranks exited with codes {codes}; see {config_path.parent}/rank*.log and the output above"
        )
    result = json.loads(metrics_path.read_text())
    if result.get("status") == "failed":
        raise RuntimeError(f"DDP job failed: {result.get('error')}")
    return result


def worker(config_path: str) -> None:
    """One rank: run the saved job on the saved, resolved config."""
    cfg = OmegaConf.load(config_path)
    module, function = cfg.launch_job.split(":")
    run_job(getattr(importlib.import_module(module), function), cfg)


if __name__ == "__main__":
    worker(sys.argv[1])
