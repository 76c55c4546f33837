"""A sweep's jobs as one ranked table (a pandas DataFrame): one row per job, best first."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from segsweep.callbacks.run_summary import is_lower_better
from segsweep.reporting.jobs import Job, SweepInfo, load_jobs, read_sweep_info

# Unranked rows come after the ranked ones in this order.
STATUS_ORDER = {"completed": 0, "failed": 1, "running": 2, "missing": 3}
INT_COLUMNS = ("rank", "job_num", "params", "epochs")


def parse_overrides(overrides: list) -> dict[str, object]:
    """``["model=unet", "optimizer.lr=0.0012", "+x=1"]`` -> ``{"model": "unet", "optimizer.lr":
    0.0012, "x": 1}``; numbers become numbers so the CSV sorts and filters them as such."""
    parsed: dict[str, object] = {}
    for item in overrides:
        key, sep, value = str(item).partition("=")
        parsed[key.lstrip("+~")] = _number(value) if sep else None
    return parsed


def default_mode(metric: str) -> str:
    """``min`` for losses, errors (incl. Rand error, VI) and times, else ``max`` (RunSummary's rule)."""
    return "min" if is_lower_better(metric) else "max"


def collect(sweep_dir: str | Path, metric: str | None = None, mode: str | None = None,
            finished: bool = False) -> pd.DataFrame:
    """The leaderboard of a sweep dir: one row per job, best first (see :func:`build_frame`)."""
    return build_frame(load_jobs(sweep_dir, finished), metric, mode, read_sweep_info(sweep_dir))


def build_frame(jobs: list[Job], metric: str | None = None, mode: str | None = None,
                info: SweepInfo | None = None) -> pd.DataFrame:
    """Rank ``jobs`` by their best ``metric`` (default: the jobs' monitored metric).

    Columns: rank, job, job_num, status, the override keys, ``best <metric>``, ``final
    <metric>``, final val/* and test/* metrics, params, epochs, wall_time_s, images_per_second,
    run_name, error, best_checkpoint, then per-class metrics. ``df.attrs`` holds ``metric``,
    ``mode``, ``override_keys``, ``swept_keys`` (overrides that vary) and ``per_class``.
    """
    info = info or SweepInfo()
    monitors = Counter(j.data["monitor"] for j in jobs if j.data.get("monitor"))
    common = monitors.most_common(1)[0][0] if monitors else None
    metric = metric or common or info.monitor or "val/iou"
    if mode is None:
        modes = Counter(j.data["monitor_mode"] for j in jobs
                        if j.data.get("monitor") == metric and j.data.get("monitor_mode"))
        fallback = info.mode if info.monitor == metric else None
        mode = (modes.most_common(1)[0][0] if modes else None) or fallback or default_mode(metric)
    rows, override_keys, metric_keys = [], {}, set()
    for job in jobs:
        overrides = parse_overrides(job.data.get("overrides") or [])
        override_keys.update(dict.fromkeys(overrides))
        best, final = _floats(job.data.get("best")), _floats(job.data.get("final"))
        others = {k: v for k, v in final.items() if k.startswith(("val/", "test/")) and k != metric}
        metric_keys.update(others)
        rows.append({
            "job": job.name, "job_num": job.num, "status": job.status, **overrides,
            f"best {metric}": _best(job, metric, mode, best, final),
            f"final {metric}": final.get(metric),
            **others, **{k: job.data.get(k) for k in ("params", "epochs", "wall_time_s",
                                                      "images_per_second", "run_name", "error",
                                                      "best_checkpoint")},
        })
    if info.optuna_best:
        for row in rows:
            row["optuna_best"] = any(_matches(row, params) for params in info.optuna_best)
    per_class = sorted(k for k in metric_keys if k.count("/") >= 2)  # val/iou/<class>
    scalars = sorted(metric_keys - set(per_class), key=lambda k: (not k.startswith("val/"), k))
    columns = ["rank", "job", "job_num", "status", *override_keys,
               *(["optuna_best"] if info.optuna_best else []), f"best {metric}", f"final {metric}",
               *scalars, "params", "epochs", "wall_time_s", "images_per_second", "run_name",
               "error", "best_checkpoint", *per_class]
    df = _rank(pd.DataFrame(rows, columns=columns), metric, mode)
    swept = [k for k in override_keys if df[k].dropna().astype(str).nunique() > 1]
    df.attrs.update(metric=metric, mode=mode, override_keys=list(override_keys), swept_keys=swept,
                    per_class=per_class, swept=info.swept, fixed=info.fixed,
                    optuna_value=info.optuna_value)
    return df


def _rank(df: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """Completed jobs with a value best first, then completed without one, failed, running."""
    value = pd.to_numeric(df[f"best {metric}"], errors="coerce")
    ranked = df["status"].eq("completed") & value.notna()
    group = df["status"].map(STATUS_ORDER).fillna(len(STATUS_ORDER)).add(1).where(~ranked, 0)
    order = df.assign(_group=group, _key=value if mode == "min" else -value).sort_values(
        ["_group", "_key", "job_num"], na_position="last", kind="stable")
    df = df.loc[order.index].reset_index(drop=True)
    df["rank"] = pd.Series(range(1, int(ranked.sum()) + 1), dtype="Int64")
    for column in INT_COLUMNS:  # nullable ints: running rows must not turn 14328209 into 1.43e7
        df[column] = pd.to_numeric(df[column], errors="coerce").round().astype("Int64")
    return df


def _best(job: Job, metric: str, mode: str, best: dict, final: dict) -> float:
    """The best epoch's value in the ranking's direction: from the history (metrics.json's
    ``best`` follows RunSummary's own max/min guess, which ``--mode`` may overrule), else
    ``best``, else the final value (test metrics are measured once)."""
    values = [v for row in job.history if not math.isnan(v := _number(row.get(metric), True))]
    if values:
        return min(values) if mode == "min" else max(values)
    value = best.get(metric, math.nan)
    return final.get(metric, math.nan) if math.isnan(value) else value


def _matches(row: dict, params: dict) -> bool:
    """Whether a job's overrides are these Optuna params (floats compared with a tolerance)."""
    for key, want in params.items():
        have = row.get(key)
        if isinstance(want, float) and isinstance(have, (int, float)):
            if not math.isclose(have, want, rel_tol=1e-6):
                return False
        elif str(have) != str(want):
            return False
    return True


def _floats(metrics) -> dict[str, float]:
    """A metrics dict with every value a float (null and non-numbers -> NaN)."""
    if not isinstance(metrics, dict):
        return {}
    return {k: _number(v, as_float=True) for k, v in metrics.items()}


def _number(value, as_float: bool = False):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan if as_float else value
    if not as_float and isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    return number
