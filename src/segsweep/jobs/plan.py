"""A job dir belongs to one configuration: what a re-run of the same dir may do with it.

Hydra rewrites ``.hydra/`` on every start, so the job records its own resolved config in
``job.json`` before training, and every later start compares against it:

- completed before (same config)    -> nothing runs, nothing is written; the stored value returns
- completed, with more epochs now   -> continues from ``checkpoints/last.ckpt``; if that attempt
                                       fails, the completed record stays (``failed_extension``)
- failed before                     -> ``rerun: failed`` (default) runs it again, old files moved aside;
                                       ``rerun: all`` runs any job again from scratch, interrupted too
- interrupted (no final metrics)    -> resumes from ``checkpoints/last.ckpt`` (or the best one if
                                       last is unreadable), else starts over
- another config                    -> refused, naming the keys that differ

Keys in ``SAFE_TO_CHANGE`` may differ on a resume (e.g. more ``trainer.max_epochs``); the change is
recorded. Results are never deleted: a forced re-run moves them to ``previous/<time>/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from segsweep.jobs.files import (
    CHECKPOINT_DIR,
    METRICS_FILE,
    PREVIOUS_DIR,
    RECORD_FILE,
    process_alive,
    read_json,
    write_json,
)
from segsweep.jobs.records import FINISHED

log = logging.getLogger(__name__)
RERUN_CHOICES = ("none", "failed", "all")
# Not part of what a run *is*: where it writes, how it reports, how it is launched.
IGNORED_KEYS = ("paths", "hydra", "job_context", "launch_job", "rerun", "optuna")
# May change between attempts of one job; the change is recorded in metrics.json.
SAFE_TO_CHANGE = ("trainer.max_epochs", "trainer.max_time", "trainer.enable_progress_bar",
                  "trainer.log_every_n_steps", "test", "logger", "callbacks", "data.num_workers")


class JobDirConflict(RuntimeError):
    """The job dir holds a run of another configuration."""


@dataclass
class JobPlan:
    """What this start of a job does: ``skip`` (already done), ``resume`` or ``start``; handed to
    the job function (``train(cfg, plan)``), and to every rank of a multi-process job."""

    action: str
    stored: dict | None = None  # the finished metrics.json: for ``skip``, and the completed
    # record an extension (more epochs) keeps if it fails
    resume_ckpt: str | None = None
    run_id: str = ""  # the job's W&B run id, kept over attempts
    attempt: int = 1
    changes: dict = field(default_factory=dict)  # safe keys that differ from the first attempt

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> JobPlan:
        return cls(**data)


def flatten(tree, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists kept as values)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree} if prefix else {}
    out: dict[str, object] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def job_identity(cfg: DictConfig) -> dict[str, object]:
    """The flattened, resolved config that defines the run (``IGNORED_KEYS`` left out).

    Paths inside the job dir are written relative to it (``<job dir>/checkpoints``), so a sweep dir
    that was moved or copied is still the same run.
    """
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    job_dir = str(cfg.paths.output_dir)

    def relative(value):
        return value.replace(job_dir, "<job dir>") if isinstance(value, str) else value

    return {k: relative(v) for k, v in flatten(resolved).items() if k.split(".", 1)[0] not in IGNORED_KEYS}


def fingerprint(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _is_safe(key: str) -> bool:
    return any(key == safe or key.startswith(safe + ".") for safe in SAFE_TO_CHANGE)


def config_diff(old: dict, new: dict) -> dict[str, tuple]:
    """Keys whose values differ: ``{key: (old, new)}`` (missing -> ``"<absent>"``)."""
    absent = "<absent>"
    return {k: (old.get(k, absent), new.get(k, absent)) for k in sorted(set(old) | set(new))
            if old.get(k, absent) != new.get(k, absent)}


def move_aside(job_dir: Path, reason: str) -> Path | None:
    """Move everything but Hydra's own files (``.hydra/`` and the job's ``<name>.log``, which Hydra
    has open right now) and older ``previous/`` into ``previous/<time>/``; return that dir (None
    if there was nothing to move)."""
    keep = {".hydra", PREVIOUS_DIR}
    entries = [p for p in job_dir.iterdir() if p.name not in keep and not (p.is_file() and p.suffix == ".log")
               ] if job_dir.is_dir() else []
    if not entries:
        return None
    target = job_dir / PREVIOUS_DIR / time.strftime("%Y%m%d-%H%M%S")
    while target.exists():
        target = target.with_name(target.name + "_")
    target.mkdir(parents=True)
    for entry in entries:
        shutil.move(str(entry), str(target / entry.name))
    log.warning("%s: %s; the earlier files were moved to %s", job_dir, reason, target)
    return target


def stored_value(payload: dict, monitor: str | None) -> float:
    """The number a sweeper gets for a finished job: best monitored value, else final, else NaN."""
    for section in ("best", "final"):
        value = (payload.get(section) or {}).get(monitor)
        if isinstance(value, (int, float)):
            return float(value)
    return math.nan


def resumable_checkpoint(job_dir: Path) -> str | None:
    """``last.ckpt``, or the newest other readable checkpoint if last is broken (with a warning).

    Raises ``segsweep.jobs.checkpoints.CheckpointError`` naming the files when checkpoints exist
    and none can be read.
    """
    from segsweep.jobs.checkpoints import CheckpointError, read_checkpoint  # torch: not for segsweep-report

    folder = job_dir / CHECKPOINT_DIR
    last = folder / "last.ckpt"
    others = sorted((p for p in folder.glob("*.ckpt") if p != last), key=lambda p: p.stat().st_mtime, reverse=True)
    candidates = ([last] if last.is_file() else []) + others
    errors = []
    for path in candidates:
        try:
            read_checkpoint(path, require_segsweep=True, head_only=True)
        except CheckpointError as err:
            errors.append(str(err))
            continue
        if errors:
            log.warning("%s; resuming from %s instead", errors[0], path)
        return str(path)
    if errors:
        raise CheckpointError(
            f"no readable checkpoint to resume {job_dir}: {'; '.join(errors)}. Delete {folder} to start the job "
            "over, or run with rerun=all (the old files are kept in previous/)")
    return None


def plan_job(cfg: DictConfig) -> JobPlan:
    """Decide what this start of the job does and record it in ``job.json`` (see module doc)."""
    job_dir = Path(cfg.paths.output_dir)
    rerun = str(cfg.get("rerun", "failed"))
    if rerun not in RERUN_CHOICES:
        raise ValueError(f"rerun={rerun!r} is not one of {list(RERUN_CHOICES)}")
    identity = job_identity(cfg)
    record = read_json(job_dir / RECORD_FILE)
    metrics = read_json(job_dir / METRICS_FILE) or {}
    status = metrics.get("status")

    if status == "running" and process_alive(metrics.get("host"), metrics.get("pid")):
        raise JobDirConflict(f"{job_dir} is being run right now by process {metrics.get('pid')}; "
                             "wait for it, or give this run another dir (hydra.run.dir / hydra.sweep.dir)")
    if record is None:  # a new dir, or one from before job records: start clean
        move_aside(job_dir, "no job.json record (a run from an older segsweep or a foreign dir)")
        return _start(job_dir, identity, attempt=1)

    diff = config_diff(record.get("config") or {}, identity)
    unsafe = {k: v for k, v in diff.items() if not _is_safe(k)}
    if unsafe and rerun != "all":
        shown = "; ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in list(unsafe.items())[:8])
        raise JobDirConflict(
            f"{job_dir} holds a run of another configuration ({shown}). Run this one in another dir "
            "(hydra.run.dir=... or hydra.sweep.dir=...), or replace it with rerun=all (the old files are "
            "moved to previous/)")
    finished = status in FINISHED
    if unsafe or rerun == "all" or (status == "failed" and rerun == "failed"):
        move_aside(job_dir, f"rerun={rerun} over a {status or 'different'} run")
        return _start(job_dir, identity, attempt=1)
    if finished and not _extends(diff, metrics):
        return JobPlan("skip", stored=metrics, run_id=record.get("run_id", ""))

    resume = resumable_checkpoint(job_dir)
    if resume is None:  # killed before the first checkpoint: nothing to keep
        move_aside(job_dir, "interrupted before its first checkpoint, starting over")
        return _start(job_dir, identity, attempt=1)
    attempt = int(record.get("attempts", 1)) + 1
    changes = {k: list(v) for k, v in diff.items()}
    write_json(job_dir / RECORD_FILE, {**record, "attempts": attempt,
                                       "changes": [*record.get("changes", []), changes] if changes else
                                       record.get("changes", [])})
    completed = metrics if status == "completed" else None  # an extension keeps it if it fails
    return JobPlan("resume", stored=completed, resume_ckpt=resume, run_id=record["run_id"], attempt=attempt,
                   changes=changes)


def _extends(diff: dict, metrics: dict) -> bool:
    """A finished run given more epochs than it trained is continued, not skipped."""
    if "trainer.max_epochs" not in diff or metrics.get("status") != "completed":
        return False
    _, new = diff["trainer.max_epochs"]
    return isinstance(new, int) and new > int(metrics.get("epochs") or 0)


def _start(job_dir: Path, identity: dict, attempt: int) -> JobPlan:
    run_id = uuid.uuid4().hex[:12]
    write_json(job_dir / RECORD_FILE, {
        "fingerprint": fingerprint(identity), "run_id": run_id, "attempts": attempt,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": identity,
    })
    return JobPlan("start", run_id=run_id, attempt=attempt)
