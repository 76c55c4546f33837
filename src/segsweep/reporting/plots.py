"""Sweep plots: the ranked metric per swept combination, and every job's learning curve.

Figures are drawn on matplotlib's Agg canvas directly, never through pyplot: no global backend
switch (harmless in a notebook or a Hydra callback), no display needed, no figure leaks.
"""

from __future__ import annotations

import io

import matplotlib
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from segsweep.reporting.jobs import Job

BEST_COLOUR, OTHER_COLOUR, TIED_COLOUR = "#d62728", "#1f77b4", "#ff7f0e"


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG bytes (tight, so outside legends are kept)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def metric_bars(df: pd.DataFrame) -> Figure | None:
    """Best value of the ranked metric per completed job, or, for a set-up table
    (:func:`~segsweep.reporting.leaderboard.build_setups`), its mean per set-up with the 95% CI as
    error bars and each replica as a dot (None when nothing is ranked).

    With exactly two swept override keys forming a grid (model x loss), a grouped
    chart: x = the first key, one bar colour per value of the second. Otherwise one horizontal bar
    per job (set-up) labelled by its swept overrides, best on top.
    """
    metric, keys = df.attrs["metric"], df.attrs.get("swept_keys", [])
    setups = bool(df.attrs.get("replica_keys"))
    done = df[df["rank"].notna()]
    if done.empty:
        return None
    column = f"mean {metric}" if setups else f"best {metric}"
    if len(keys) == 2 and _is_grid(done, *keys):
        return _grouped_bars(done, column, *keys)
    figure = Figure(figsize=(8, 1.2 + 0.4 * len(done)))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    done = done.iloc[::-1]  # barh draws bottom-up: best on top
    labels = [_label(row, keys, numbered=not setups) for _, row in done.iterrows()]
    values = done[column].astype(float).tolist()
    colours = [TIED_COLOUR if tied == "yes" else OTHER_COLOUR
               for tied in done.get("tied with best", [None] * len(done))]
    colours[-1] = BEST_COLOUR
    bars = ax.barh(labels, values, color=colours, xerr=_errors(done) if setups else None,
                   capsize=4, error_kw={"elinewidth": 1.2})
    if setups:  # the replicas as dots, the mean written right of everything drawn for the row
        for y, (_, row) in enumerate(done.iterrows()):
            replicas = row[f"{metric} per replica"]
            ax.plot(replicas, [y] * len(replicas), "o", color="black", markersize=3, zorder=3)
            right = max(v for v in (*replicas, row["ci95 high"]) if v == v)  # v == v drops NaN
            ax.annotate(f"{row[column]:.4f} (n={row['n']})", (right, y), xytext=(6, 0),
                        textcoords="offset points", va="center", fontsize=8)
    else:
        ax.bar_label(bars, fmt="%.4f", padding=2, fontsize=8)
    ax.set_xlabel(f"{column} ({df.attrs['mode']} is better)")
    ax.set_title(f"{metric}: mean per set-up, 95% CI, replicas as dots (best in red, tied in orange)"
                 if setups else f"{metric} per job (best in red)")
    ax.margins(x=0.25 if setups else 0.15)
    return figure


def _errors(setups: pd.DataFrame) -> list[list[float]]:
    """Asymmetric error bar lengths (below, above the mean) of the 95% intervals: NaN, so no bar,
    for a single replica."""
    mean = setups[f"mean {setups.attrs['metric']}"].astype(float)
    low, high = setups["ci95 low"].astype(float), setups["ci95 high"].astype(float)
    return [(mean - low).tolist(), (high - mean).tolist()]


def _grouped_bars(done: pd.DataFrame, column: str, x_key: str, hue_key: str) -> Figure:
    best = (done[x_key].iloc[0], done[hue_key].iloc[0])  # rows come ranked
    in_sweep_order = done.sort_values("job_num")  # the command line's order, not the ranking
    xs = list(dict.fromkeys(in_sweep_order[x_key]))
    hues = list(dict.fromkeys(in_sweep_order[hue_key]))
    figure = Figure(figsize=(max(6.0, 1.2 * len(xs) * max(1, len(hues)) ** 0.5 + 2), 4.5))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    width = 0.8 / len(hues)
    for h, hue in enumerate(hues):
        values = [done.loc[(done[x_key] == x) & (done[hue_key] == hue), column] for x in xs]
        heights = [float(v.iloc[0]) if len(v) else float("nan") for v in values]
        positions = [i - 0.4 + width * (h + 0.5) for i in range(len(xs))]
        errors = None
        if done.attrs.get("replica_keys"):  # set-ups: each bar's 95% interval
            rows = [done.loc[v.index[0]] if len(v) else None for v in values]
            errors = [[float(r[column] - r["ci95 low"]) if r is not None else float("nan")
                       for r in rows],
                      [float(r["ci95 high"] - r[column]) if r is not None else float("nan")
                       for r in rows]]
        bars = ax.bar(positions, heights, width, label=str(hue), yerr=errors, capsize=3)
        for x, bar in zip(xs, bars, strict=True):
            if (x, hue) == best:
                bar.set(edgecolor="black", linewidth=2)
        ax.bar_label(bars, fmt="%.4f", fontsize=7, rotation=90 if len(hues) > 3 else 0, padding=2)
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_xlabel(x_key)
    ax.set_ylabel(column)
    ax.margins(y=0.15)
    ax.legend(title=hue_key, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    ax.set_title(f"{column.removeprefix('best ')} by {x_key} and {hue_key} (best outlined)")
    return figure


def learning_curves(jobs: list[Job], metric: str, best: str | None = None) -> Figure | None:
    """``metric`` against epoch from each job's history, one line per job (None if no job has
    any); the ``best`` job's line is drawn thicker."""
    curves = {}
    for job in jobs:
        points = [(row.get("epoch"), row.get(metric)) for row in job.history]
        points = [(x, float(y)) for x, y in points if isinstance(x, (int, float))
                  and isinstance(y, (int, float)) and y == y]  # y == y drops NaN
        if points:
            curves[job.name] = points
    if not curves:
        return None
    figure = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    colours = matplotlib.colormaps["tab20" if len(curves) > 10 else "tab10"].colors
    for i, (name, points) in enumerate(curves.items()):
        xs, ys = zip(*points, strict=True)
        is_best = name == best
        ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3,
                linewidth=2.8 if is_best else 1.2, zorder=3 if is_best else 2,
                color=colours[i % len(colours)], label=f"{name} (best)" if is_best else name)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} during training")
    ax.grid(alpha=0.3)
    # Outside the axes: a legend of many runs would hide the curves.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small",
              ncol=1 if len(curves) <= 20 else 2)
    return figure


def _is_grid(done: pd.DataFrame, x_key: str, hue_key: str) -> bool:
    """Each combination at most once, and values shared on both axes (a grid, holes allowed);
    not Optuna's continuous samples, where every job has its own learning rate."""
    shared = len(done) > max(done[x_key].nunique(), done[hue_key].nunique())
    return shared and not done.duplicated([x_key, hue_key]).any()


def _label(row: pd.Series, keys: list[str], numbered: bool = True) -> str:
    """``#<job num> key=value, ...``: the number keeps repeated combinations (Optuna may sample
    one twice) apart on the categorical axis; set-ups are distinct already (``numbered=False``)."""
    if not keys:  # a set-up table without swept keys has one row: the whole sweep
        return str(row["job"]) if "job" in row else "all jobs"
    values = (f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k]) for k in keys)
    pairs = ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))
    return f"#{row['job_num']} {pairs}" if numbered and pd.notna(row["job_num"]) else pairs
