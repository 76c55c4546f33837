"""``write_report``: a sweep dir's leaderboard as CSV, Markdown and a self-contained HTML page with
plots, plus the plots as PNGs next to them (for READMEs)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from segsweep.jobs.files import write_atomic
from segsweep.reporting.html_report import html_table, render_page
from segsweep.reporting.jobs import Job, load_jobs, read_sweep_info
from segsweep.reporting.leaderboard import build_frame, build_setups
from segsweep.reporting.plots import learning_curves, metric_bars, png_bytes
from segsweep.reporting.stats import TIE_ALPHA

ERROR_WIDTH = 80  # the table shows the start of an error; the HTML's failure section all of it
# Columns the CSV keeps but the tables leave out (paths, duplicates of the job name).
CSV_ONLY = ("job_num", "run_name", "best_checkpoint")
DECIMALS = {"wall_time_s": 1, "images_per_second": 1}  # else 4: metrics, the ranked quantity
# Columns the set-up table leaves out or shows merged (the interval as one "[low, high]" cell).
SETUP_HIDDEN = ("status", "jobs", "ci95 low", "ci95 high")


def display_columns(df: pd.DataFrame) -> list[str]:
    """The columns the Markdown/HTML tables show: swept overrides (all overrides if none varies),
    scalar metrics and run facts; per-class metrics and paths stay in the CSV."""
    keys = df.attrs["swept_keys"] or df.attrs["override_keys"]
    hidden = set(df.attrs["override_keys"]) - set(keys) | set(df.attrs["per_class"]) | set(CSV_ONLY)
    # Columns empty in every row (no error, a metric logged as NaN) only take room.
    return [c for c in df.columns if c not in hidden and (c == "rank" or df[c].notna().any())]


def setup_columns(setups: pd.DataFrame) -> list[str]:
    """The set-up table's columns: as :func:`display_columns`, the interval as one column."""
    columns = [c for c in display_columns(setups) if c not in SETUP_HIDDEN]
    if setups["ci95 low"].isna().all():  # one replica each, or nothing completed
        return columns
    at = columns.index("tied with best") if "tied with best" in columns else len(columns)
    return [*columns[:at], "95% CI", *columns[at:]]


def format_table(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``df[columns]`` as strings: metrics rounded to 4 decimals, overrides and p-values to 4
    significant digits (a learning rate of 0.00012 must not show as 0.0001), missing values
    blank; ``95% CI`` is made of ``ci95 low`` and ``ci95 high``."""
    significant = set(df.attrs["override_keys"]) | {"p vs best"}
    table = pd.DataFrame(index=df.index)
    for column in columns:
        if column == "95% CI":
            table[column] = [f"[{_fmt(low)}, {_fmt(high)}]" if pd.notna(low) else ""
                             for low, high in zip(df["ci95 low"], df["ci95 high"], strict=True)]
            continue
        table[column] = [_fmt(v, column in significant, DECIMALS.get(column, 4)) for v in df[column]]
    if "error" in table:
        table["error"] = [_shorten(v) for v in table["error"]]
    return table


def summary_lines(df: pd.DataFrame, sweep_dir: Path, code=str,
                  jobs: pd.DataFrame | None = None) -> list[str]:
    """The lines above the table: job counts by status (from ``jobs``, default ``df``), what is
    ranked, the sweep's overrides. ``code`` marks up names and overrides (backticks in
    Markdown)."""
    counts = (df if jobs is None else jobs)["status"].value_counts()
    known = [f"{counts.get(s, 0)} {s}" for s in ("completed", "failed", "running")]
    known += [f"{n} {s}" for s, n in counts.items() if s not in ("completed", "failed", "running")]
    metric, mode = df.attrs["metric"], df.attrs["mode"]
    lines = [f"{counts.sum()} jobs: {', '.join(known)}. Ranked by best {code(metric)} ({mode} is "
             "better); the other metric columns are final values"
             f"{' (means over replicas in the set-up table)' if jobs is not None else ''}."]
    all_jobs = df if jobs is None else jobs
    for _, row in all_jobs[all_jobs["status"].eq("unreadable")].iterrows():  # damaged after it was written
        lines.append(f"Unreadable: {code(str(row['job']))}: {row.get('error')}")
    if df["rank"].isna().all():
        found = [c for c in df.columns if c.startswith(("val/", "test/")) and df[c].notna().any()]
        hint = f" (metrics found: {', '.join(map(code, found))})" if found else ""
        lines.append(f"No completed job has {code(metric)} yet: nothing to rank{hint}.")
    for label in ("swept", "fixed"):
        if df.attrs.get(label):
            lines.append(f"{label.capitalize()}: {' '.join(map(code, df.attrs[label]))}")
    if df.attrs.get("replica_keys"):
        keys = " and ".join(map(code, df.attrs["replica_keys"]))
        lines.append(
            f"Replicas: jobs differing only in {keys} are one set-up, ranked by the mean of its "
            f"replicas' best {code(metric)}; sd is the sample one, the 95% CI Student t's with "
            f"n-1 degrees of freedom. Tied with best: a two-sided Welch's t-test against the best "
            f"set-up gives p >= {TIE_ALPHA} (untested with 1 replica). Failed, interrupted or "
            "pruned replicas are not counted (column excluded).")
    if "optuna_best" in df and df.attrs.get("optuna_value") is not None:
        lines.append(f"Optuna best value: {_fmt(df.attrs['optuna_value'])} (column optuna_best).")
    lines.append(f"Sweep dir: {code(str(sweep_dir))}")
    return lines


def markdown_table(df: pd.DataFrame, columns: list[str]) -> str:
    """``df[columns]`` formatted as a Markdown table, numbers right-aligned."""
    table = format_table(df, columns)
    if "error" in table:  # a pipe would end the cell
        table["error"] = table["error"].str.replace("|", r"\|")
    numeric = [c == "95% CI" or _is_number(df[c]) for c in columns]
    return table[columns].to_markdown(index=False, disable_numparse=True,  # keep our rounding
                                      colalign=["right" if n else "left" for n in numeric])


def to_markdown(df: pd.DataFrame, sweep_dir: Path, setups: pd.DataFrame | None = None) -> str:
    """The Markdown leaderboard: a title, the summary lines, and the table; with replicas, the
    set-up table first, then the jobs."""
    body = markdown_table(df, display_columns(df))
    if setups is not None:
        body = (f"## Set-ups (mean over replicas)\n\n{markdown_table(setups, setup_columns(setups))}"
                f"\n\n## Jobs\n\n{body}")
    lines = summary_lines(setups if setups is not None else df, sweep_dir,
                          code=lambda text: f"`{text}`", jobs=df)
    bullets = "".join(f"- {line}\n" for line in lines[1:])
    return f"# Sweep leaderboard\n\n{lines[0]}\n\n{bullets}\n{body}\n"


def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None,
                 metric: str | None = None, mode: str | None = None,
                 finished: bool = False) -> dict[str, Path]:
    """Write ``leaderboard.csv``, ``leaderboard.md``, ``report.html`` and the plots
    (``bar_<metric>.png``, ``curves_<metric>.png``, when there is something to plot) into
    ``out_dir`` (default: the sweep dir). ``finished`` marks job dirs without metrics.json as
    ``interrupted`` rather than ``running``. With replicas (jobs differing only in ``seed`` or
    ``data.fold``), ``leaderboard.csv`` ranks set-ups (see
    :func:`segsweep.reporting.leaderboard.build_setups`) and ``leaderboard_jobs.csv`` (kind
    ``jobs_csv``) holds every job. Returns the written paths by kind.

    Raises FileNotFoundError if the sweep dir does not exist or holds no job dirs.
    """
    sweep_dir = Path(sweep_dir)
    jobs = load_jobs(sweep_dir, finished)  # first: raises before anything is created
    out = Path(out_dir) if out_dir is not None else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    df = build_frame(jobs, metric, mode, read_sweep_info(sweep_dir))
    metric, stem = df.attrs["metric"], df.attrs["metric"].replace("/", "_")
    setups = build_setups(df)
    paths = {"csv": out / "leaderboard.csv", "markdown": out / "leaderboard.md",
             "html": out / "report.html"}
    if setups is None:
        _write(paths["csv"], df.to_csv(index=False).encode())
    else:  # the set-ups are the leaderboard; every job stays in a CSV of its own
        paths["jobs_csv"] = out / "leaderboard_jobs.csv"
        _write(paths["jobs_csv"], df.to_csv(index=False).encode())
        per_replica = f"{metric} per replica"
        csv = setups.assign(**{per_replica: setups[per_replica].map(
            lambda values: ";".join(f"{v:.6g}" for v in values) if isinstance(values, tuple) else "")})
        _write(paths["csv"], csv.to_csv(index=False).encode())
    _write(paths["markdown"], to_markdown(df, sweep_dir, setups).encode())

    best = _best_job(df, setups)
    figures = []
    bars = (f"Mean {metric} per set-up: 95% CI as error bars, replicas as dots"
            if setups is not None else f"Best {metric} per job")
    plots = {"bar": (metric_bars(setups if setups is not None else df), f"bar_{stem}.png", bars),
             "curves": (learning_curves(jobs, metric, best), f"curves_{stem}.png",
                        f"{metric} per epoch, one line per job")}
    for kind, (figure, name, caption) in plots.items():
        if figure is not None:
            png = png_bytes(figure)
            paths[kind] = out / name
            _write(paths[kind], png)
            figures.append((caption, png, "plot"))
    prediction = _best_prediction(df, jobs, best)
    if prediction is not None:
        caption = (f"Validation predictions of {prediction.parent.parent.name} "
                   f"({prediction.stem}): image | prediction | target")
        figures.append((caption, prediction.read_bytes(), "overlay"))
    columns = display_columns(df)
    table = html_table(format_table(df, columns), df["status"].tolist(),
                       {c for c in columns if _is_number(df[c])})
    if setups is not None:
        columns = setup_columns(setups)
        table = (html_table(format_table(setups, columns), setups["status"].tolist(),
                            {c for c in columns if c == "95% CI" or _is_number(setups[c])},
                            tied=setups["tied with best"].eq("yes").tolist())
                 + f"<h2>Jobs</h2>{table}")
    failures = [(j.name, str(j.data.get("error") or ""), str(j.data.get("traceback") or ""))
                for j in jobs if j.status == "failed"]
    lines = summary_lines(df if setups is None else setups, sweep_dir, jobs=df)
    page = render_page(f"Sweep report: {sweep_dir.name}", lines, table, figures, failures)
    _write(paths["html"], page.encode())
    return paths


def _best_job(df: pd.DataFrame, setups: pd.DataFrame | None) -> str | None:
    """The best-ranked job; with replicas, the best replica of the best set-up."""
    if setups is not None and setups["rank"].notna().any():
        replicas = set(setups.loc[0, "jobs"].split())
        return next(job for job in df.loc[df["rank"].notna(), "job"] if job in replicas)
    return df["job"].iloc[0] if df["rank"].notna().any() else None


def _best_prediction(df: pd.DataFrame, jobs: list[Job], best: str | None) -> Path | None:
    """The latest predictions/epoch_XXX.png of the ``best`` job, else of the best-ranked job that
    has one."""
    dirs = {job.name: job.dir for job in jobs}
    ranked = df.loc[df["rank"].notna(), "job"].tolist()
    for name in ([best] if best else []) + ranked:
        pngs = sorted((dirs[name] / "predictions").glob("epoch_*.png"))
        if pngs:
            return pngs[-1]
    return None


def _is_number(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _fmt(value, significant: bool = False, decimals: int = 4) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, int) or (hasattr(value, "dtype") and pd.api.types.is_integer(value)):
        return f"{int(value):,}" if abs(value) >= 10_000 else str(int(value))
    if isinstance(value, float):
        return f"{value:.4g}" if significant else f"{value:.{decimals}f}"
    if isinstance(value, tuple):  # per-replica values
        return ", ".join(_fmt(v, significant, decimals) for v in value)
    return str(value)


def _shorten(text: str) -> str:
    text = " ".join(text.split())  # tracebacks' newlines would break table rows
    return text if len(text) <= ERROR_WIDTH else text[: ERROR_WIDTH - 1] + "…"


def _write(path: Path, data: bytes) -> None:
    write_atomic(path, data)  # a reader (a browser, a second segsweep-report) never sees half a file
