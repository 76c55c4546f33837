"""A sweep's jobs as one ranked table (a pandas DataFrame): one row per job, best first."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from segsweep.jobs.records import is_lower_better
from segsweep.replicas import is_replica_key
from segsweep.reporting.jobs import Job, SweepInfo, load_jobs, read_sweep_info
from segsweep.reporting.stats import replica_stats, tie_label, welch_p_value

# Unranked rows come after the ranked ones in this order.
STATUS_ORDER = {"completed": 0, "failed": 1, "pruned": 2, "interrupted": 3, "unreadable": 4, "running": 5,
                "not started": 6, "missing": 7}
INT_COLUMNS = ("rank", "job_num", "params", "epochs", "n")


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
    df = _rank(pd.DataFrame(rows, columns=columns), f"best {metric}", mode)
    swept = [k for k in override_keys if df[k].dropna().astype(str).nunique() > 1]
    df.attrs.update(metric=metric, mode=mode, override_keys=list(override_keys), swept_keys=swept,
                    per_class=per_class, swept=info.swept, fixed=info.fixed,
                    optuna_value=info.optuna_value)
    return df


def build_setups(jobs_df: pd.DataFrame) -> pd.DataFrame | None:
    """One row per set-up (a job's overrides without its ``seed`` / ``data.fold``), ranked by the
    mean of its replicas' best metric, from :func:`build_frame`'s table; None when the sweep has no
    replica key or every set-up ran once (the per-job table says it all).

    Columns: rank, status, the set-up's override keys, n (replicas counted: completed with a
    value), ``mean <metric>``, ``sd <metric>``, ``ci95 low``/``ci95 high`` (Student t),
    ``tied with best`` and ``p vs best`` (two-sided Welch's t-test, see
    :mod:`segsweep.reporting.stats`), ``<metric> per replica`` (a tuple, job order), replicas
    (their seed/fold), excluded (failed, interrupted, ... replicas by status), the other scalar
    metrics and wall_time_s averaged over the counted replicas, jobs. ``df.attrs`` as the job
    table's, ``override_keys``/``swept_keys`` being the set-up's, plus ``replica_keys``.
    """
    attrs = jobs_df.attrs
    metric, mode = attrs["metric"], attrs["mode"]
    replica_keys = [k for k in attrs["override_keys"] if is_replica_key(k)]
    setup_keys = [k for k in attrs["override_keys"] if not is_replica_key(k)]
    if not replica_keys:
        return None
    values = jobs_df[setup_keys].map(lambda v: "" if pd.isna(v) else _plain(v))
    keyed = jobs_df.assign(_setup=values.agg("\x1f".join, axis=1) if setup_keys else "").sort_values(
        "job_num", kind="stable")
    groups = keyed.groupby("_setup", sort=False)
    if groups.size().max() < 2:
        return None
    value_column = f"best {metric}"
    others = [c for c in jobs_df.columns if c.startswith(("val/", "test/"))
              and c not in attrs["per_class"]]
    rows = []
    for _, group in groups:
        counted = group[group["status"].eq("completed") & group[value_column].notna()]
        excluded = group.drop(counted.index)["status"].value_counts()
        row = {**group.iloc[0][setup_keys].to_dict(), "n": len(counted),
               "replicas": ", ".join(" ".join(f"{k}={_plain(r[k])}" for k in replica_keys)
                                     for _, r in counted.iterrows()),
               "excluded": ", ".join(f"{n} {status}" for status, n in excluded.items()),
               "jobs": " ".join(group["job"]), "job_num": group["job_num"].iloc[0],
               "status": "completed" if len(counted) else excluded.index[0]}
        if len(counted):
            stats = replica_stats(counted[value_column].astype(float).tolist())
            row.update({"_stats": stats, f"mean {metric}": stats.mean, f"sd {metric}": stats.sd,
                        "ci95 low": stats.ci_low, "ci95 high": stats.ci_high,
                        f"{metric} per replica": tuple(counted[value_column].astype(float)),
                        **counted[[*others, "wall_time_s"]].apply(pd.to_numeric, errors="coerce")
                        .mean().to_dict(), "params": counted["params"].iloc[0]})
        rows.append(row)
    columns = ["rank", *setup_keys, "n", f"mean {metric}", f"sd {metric}", "ci95 low",
               "ci95 high", "tied with best", "p vs best", f"{metric} per replica", "replicas",
               "excluded", *others, "params", "wall_time_s", "status", "jobs", "job_num"]
    setups = _rank(pd.DataFrame(rows, columns=[*columns, "_stats"]), f"mean {metric}", mode)
    setups["tied with best"] = setups["tied with best"].astype(object)
    if setups["rank"].notna().any():  # ranked rows come first: row 0 is the best set-up
        best = setups.loc[0, "_stats"]
        setups.loc[0, "tied with best"] = "best"
        for i in setups.index[setups["rank"].notna()][1:]:
            other = setups.loc[i, "_stats"]
            p_value = welch_p_value(best, other)
            setups.loc[i, "p vs best"] = p_value
            setups.loc[i, "tied with best"] = tie_label(best, other, p_value)
    setups = setups[columns]
    swept = [k for k in setup_keys if setups[k].dropna().astype(str).nunique() > 1]
    setups.attrs.update({**attrs, "override_keys": setup_keys, "swept_keys": swept,
                         "replica_keys": replica_keys})
    return setups


def _rank(df: pd.DataFrame, value_column: str, mode: str) -> pd.DataFrame:
    """Completed rows with a value best first, then completed without one, failed, running."""
    value = pd.to_numeric(df[value_column], errors="coerce")
    ranked = df["status"].eq("completed") & value.notna()
    group = df["status"].map(STATUS_ORDER).fillna(len(STATUS_ORDER)).add(1).where(~ranked, 0)
    order = df.assign(_group=group, _key=value if mode == "min" else -value).sort_values(
        ["_group", "_key", "job_num"], na_position="last", kind="stable")
    df = df.loc[order.index].reset_index(drop=True)
    df["rank"] = pd.Series(range(1, int(ranked.sum()) + 1), dtype="Int64")
    for column in (c for c in INT_COLUMNS if c in df):  # nullable ints: running rows must not turn 14328209 into 1.43e7
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


def _plain(value) -> str:
    """An override value as typed: 1, not 1.0."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


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
