"""What every entry point shares: the run dir, metrics.json, and failure handling."""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

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


def last_checkpoint(output_dir: str | Path) -> str | None:
    """``checkpoints/last.ckpt`` of a job dir, if a previous attempt (a requeue) left one."""
    path = Path(output_dir) / "checkpoints" / "last.ckpt"
    return str(path) if path.is_file() else None


@rank_zero_only
def write_metrics_json(output_dir: str | Path, payload: dict) -> Path:
    path = Path(output_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # NaN is not JSON: write null so any reader can parse the file.
    clean = json.loads(json.dumps(payload, default=str).replace("NaN", "null"))
    path.write_text(json.dumps(clean, indent=2, sort_keys=False) + "\n")
    return path


def _finish_wandb(exit_code: int) -> None:
    import sys

    if "wandb" in sys.modules:  # only if this job used it: importing wandb costs seconds
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)


def run_job(job: Callable[[DictConfig], dict], cfg: DictConfig) -> dict:
    """Run one job; on failure write a ``failed`` metrics.json with the error.

    In a multirun the failure is logged and the sweep goes on (the job's value is NaN, which
    Optuna records as a failed trial); a single run re-raises so the user sees the error. The W&B
    run is always finished so nothing leaks into the next job of a sweep.
    """
    started = time.time()
    context = hydra_context(cfg)
    try:
        result = job(cfg)
        _finish_wandb(0)
        return result
    except Exception as err:
        _finish_wandb(1)
        payload = {
            "status": "failed",
            "error": f"{type(err).__name__}: {err}",
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
