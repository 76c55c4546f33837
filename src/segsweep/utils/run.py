"""What every entry point shares: the run dir, metrics.json, and failure handling."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from segsweep.utils.errors import describe_error
from segsweep.utils.jobdir import plan_job, stored_value, write_json_atomic

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"


def hydra_context(cfg: DictConfig | None = None) -> dict:
    """Overrides and group choices of this job: from Hydra, or saved in ``cfg.job_context`` by the
    DDP launcher for its workers (empty outside both)."""
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


@rank_zero_only
def write_metrics_json(output_dir: str | Path, payload: dict) -> Path:
    path = Path(output_dir) / METRICS_FILE
    # NaN is not JSON: write null so any reader can parse the file.
    clean = json.loads(json.dumps(payload, default=str).replace("NaN", "null"))
    write_json_atomic(path, clean)  # a kill mid-write never leaves half a metrics.json
    return path


def running_payload(cfg: DictConfig, **extra) -> dict:
    """metrics.json while a job runs: who runs it (host, pid: a dead pid means interrupted)."""
    return {"status": "running", "run_name": cfg.get("run_name"), "monitor": cfg.get("optimized_metric"),
            "host": socket.gethostname(), "pid": os.getpid(), "attempt": cfg.get("attempt", 1),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), **hydra_context(cfg), **extra}


def _finish_wandb(exit_code: int) -> None:
    import sys

    if "wandb" in sys.modules:  # only if this job used it: importing wandb costs seconds
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)


def run_job(job: Callable[[DictConfig], dict], cfg: DictConfig) -> dict:
    """Run one job in its dir; never lose or overwrite a result (see ``segsweep.utils.jobdir``).

    A dir that completed before returns its stored value without running (a re-run sweep gets the
    right number); an interrupted one resumes; another config is refused. On failure a ``failed``
    metrics.json records the error: in a multirun the sweep goes on (the job's value is NaN, which
    the Optuna sweeper records as a failed trial); a single run re-raises. The W&B run is always
    finished so nothing leaks into the next job of a sweep.
    """
    started = time.time()
    context = hydra_context(cfg)
    if not cfg.get("launch_job"):  # DDP ranks (segsweep.launch) run what their parent planned
        plan = plan_job(cfg)
        if plan.action == "skip":
            value = stored_value(plan.stored, cfg.get("optimized_metric"))
            log.info("%s already %s (value %s): not run again (rerun=all to force)",
                     cfg.paths.output_dir, plan.stored.get("status"), value)
            return {**plan.stored, "value": value}
        with open_dict(cfg):
            cfg.resume_ckpt, cfg.run_id, cfg.attempt = plan.resume_ckpt, plan.run_id, plan.attempt
            cfg.job_changes = plan.changes
        write_metrics_json(cfg.paths.output_dir, running_payload(cfg))
    try:
        result = job(cfg)
        _finish_wandb(0)
        return result
    except Exception as err:
        _finish_wandb(1)
        payload = {
            "status": "failed",
            "error": describe_error(err),  # the root cause, not a wrapper's text
            "traceback": traceback.format_exc(),
            "run_name": cfg.get("run_name"),
            "monitor": cfg.get("optimized_metric"),
            "wall_time_s": time.time() - started,
            **context,
        }
        write_metrics_json(cfg.paths.output_dir, payload)
        if not context.get("multirun"):
            raise
        log.error("job %s failed, the sweep goes on: %s", cfg.get("run_name"), payload["error"])
        return {**payload, "value": math.nan}
