"""Running one job in its dir: plan it once, run it, record how it ended, never lose a result.

Every entry point (``segsweep-train``, ``segsweep-eval``, the DDP ranks) runs its job function
through :func:`run_job`, which hands it the job's :class:`~segsweep.jobs.plan.JobPlan`.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from segsweep.jobs import records
from segsweep.jobs.errors import RankFailed, describe_error
from segsweep.jobs.files import METRICS_FILE, DiskFullError, free_space, is_disk_full
from segsweep.jobs.plan import JobPlan, plan_job, stored_value
from segsweep.jobs.ranks import follow, launched_rank, share

log = logging.getLogger(__name__)
Job = Callable[[DictConfig, JobPlan], dict]

write_metrics = rank_zero_only(records.write_metrics)  # one writer per job, whatever its ranks


def _finish_wandb(exit_code: int) -> None:
    if "wandb" in sys.modules:  # only if this job used it: importing wandb costs seconds
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)


def run_job(job: Job, cfg: DictConfig, plan: JobPlan | None = None) -> dict:
    """Run ``job(cfg, plan)`` in its dir (``cfg.paths.output_dir``); return its metrics.json payload
    with the sweeper's ``value``.

    ``plan`` is decided here (``segsweep.jobs.plan``) unless given (the ranks of a DDP job follow
    their launcher's). A dir that completed before returns its stored value without running; an
    interrupted one resumes; another config is refused. On failure a ``failed`` record keeps the
    error (a failed extension of a completed job keeps the completed record): in a multirun the
    sweep goes on (the job's value is NaN, a failed Optuna trial); a single run re-raises. The W&B
    run is always finished, so nothing leaks into the next job of a sweep.
    """
    started = time.time()
    context = records.hydra_context(cfg)
    if plan is None:
        plan = plan_once(cfg)
        if plan.action == "skip":
            value = stored_value(plan.stored, cfg.get("optimized_metric"))
            log.info("%s already %s (value %s): not run again (rerun=all to force)",
                     cfg.paths.output_dir, plan.stored.get("status"), value)
            return {**plan.stored, "value": value}
        write_metrics(cfg.paths.output_dir, records.running_record(cfg, attempt=plan.attempt))
    try:
        result = job(cfg, plan)
        _finish_wandb(0)
        return result
    except Exception as err:
        _finish_wandb(1)
        if is_disk_full(err) and not isinstance(err, DiskFullError):
            err = DiskFullError(getattr(err, "filename", None) or cfg.paths.output_dir)
        payload = records.failed_record(
            describe_error(err), traceback.format_exc(), run_name=cfg.get("run_name"),
            monitor=cfg.get("optimized_metric"), wall_time_s=time.time() - started, context=context,
            completed=plan.stored)
        _record_failure(cfg.paths.output_dir, payload)
        if not context.get("multirun"):
            if disk_full(err) and not cfg.get("launch_job"):  # a DDP rank leaves it to its launcher
                log.error("%s", disk_full(err))  # one line naming the file: a traceback says no more
                raise SystemExit(1) from None
            raise
        log.error("job %s failed, the sweep goes on: %s", cfg.get("run_name"), payload["error"])
        return {**payload, "value": math.nan}


def plan_once(cfg: DictConfig) -> JobPlan:
    """The job's plan, decided once per job: by this process, or, when a cluster started the job's
    ranks (SLURM tasks, torchrun), by global rank 0 and followed by the others (``ranks``)."""
    rank = launched_rank()
    if rank is None:
        return plan_job(cfg)
    if rank.rank > 0:
        return follow(cfg.paths.output_dir, rank)
    try:
        plan = plan_job(cfg)
    except Exception as err:  # a refusal: the other ranks must not wait for a plan
        share(cfg.paths.output_dir, rank, None, error=err)
        raise
    share(cfg.paths.output_dir, rank, plan)
    return plan


def disk_full(err: BaseException) -> str | None:
    """The one-line message of a full disk, raised here or in a DDP rank; else None."""
    if isinstance(err, DiskFullError):
        return str(err)
    if isinstance(err, RankFailed) and err.error.startswith(DiskFullError.__name__):
        return err.error.split(": ", 1)[1]
    return None


def _record_failure(output_dir: str | Path, payload: dict) -> None:
    """Write the failed record; where even that cannot be written (a full disk), say so."""
    try:
        write_metrics(output_dir, payload)
    except OSError as err:
        log.error("could not record the failure in %s (%s; %s free): the job stays 'running' there and "
                  "is resumed as interrupted by the next run", Path(output_dir) / METRICS_FILE, err,
                  free_space(output_dir))
