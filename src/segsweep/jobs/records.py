"""What ``metrics.json`` says about a job: one builder per status, used by every writer (the job
itself, both GPU-side launchers, the sweeper's reading of it, the report).

Statuses: ``running`` (with the host and pid running it), ``completed``, ``failed`` (with the
error and traceback), ``pruned`` (an Optuna trial stopped early); the report adds
``interrupted`` (a running record whose process is gone), ``unreadable`` and ``not started``.
Free of torch and Lightning (the report reads these records).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from segsweep.jobs.files import METRICS_FILE, write_json

FINISHED = ("completed", "failed", "pruned")

# Instance errors: adapted Rand error and variation of information (segsweep.instance.metrics).
LOWER_IS_BETTER_METRICS = ("are", "voi")


def is_lower_better(name: str) -> bool:
    """Whether the ``best`` value of metric ``name`` is its lowest (losses, errors, times)."""
    return (
        "loss" in name
        or "error" in name
        or name.startswith("time/")
        or name.rsplit("/", 1)[-1] in LOWER_IS_BETTER_METRICS
    )


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def hydra_context(cfg: DictConfig | None = None) -> dict:
    """Overrides and group choices of this job: from Hydra, or saved in ``cfg.job_context`` by the
    DDP launcher for its ranks (empty outside both)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        saved = cfg.get("job_context") if cfg is not None else None
        return OmegaConf.to_container(saved) if saved else {}
    hydra = HydraConfig.get()
    return {
        "overrides": list(hydra.overrides.task),
        "choices": {k: v for k, v in hydra.runtime.choices.items() if not k.startswith("hydra/")},
        "job_num": hydra.job.get("num"),
        "multirun": hydra.mode == RunMode.MULTIRUN,
    }


def running_record(cfg: DictConfig, attempt: int = 1, **extra) -> dict:
    """While a job runs: who runs it (host and pid: a dead pid means interrupted)."""
    return {"status": "running", "run_name": cfg.get("run_name"), "monitor": cfg.get("optimized_metric"),
            "host": socket.gethostname(), "pid": os.getpid(), "attempt": attempt, "updated": now(),
            **hydra_context(cfg), **extra}


def failed_record(error: str, traceback: str, *, run_name: str | None, monitor: str | None,
                  wall_time_s: float, context: dict, completed: dict | None = None) -> dict:
    """A failed attempt. When the job had completed before and this attempt extended it (more
    epochs), the completed record stays as it was, with the failed attempt noted under
    ``failed_extension``: the next run retries the extension from the job's last checkpoint."""
    failure = {"error": error, "traceback": traceback, "wall_time_s": wall_time_s, "time": now()}
    if completed is not None:
        return {**completed, "failed_extension": {**failure, "overrides": context.get("overrides")}}
    return {"status": "failed", **failure, "run_name": run_name, "monitor": monitor, **context}


def write_metrics(output_dir: str | Path, payload: dict) -> Path:
    """``<output_dir>/metrics.json``, written whole (a kill never leaves half a file)."""
    return write_json(Path(output_dir) / METRICS_FILE, payload)
