"""A sweep dir's files: each job dir's metrics.json (or Hydra's overrides while it runs), the
sweep's multirun.yaml and Optuna's optimization_results.yaml.

Only files are read, so this works on a sweep that is still running, copied from a cluster, or
half failed. Free of torch/lightning imports so ``segsweep-report`` starts fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from segsweep.jobs.files import METRICS_FILE, load_json, process_alive

JOB_DIR = re.compile(r"^(\d+)_")  # Hydra sweep subdirs: <job num>_<run name>
# Override values Hydra sweeps over: a,b,c (not a [list]) or a sweep function.
SWEEP_VALUE = re.compile(r"^(?![\[{'\"]).*,|^\s*(choice|range|interval|glob|tag)\(")


@dataclass
class Job:
    """One job dir: its metrics.json payload (overrides only, while running) and status."""

    dir: Path
    data: dict
    status: str

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def num(self) -> int | None:
        num = self.data.get("job_num")
        if isinstance(num, int):
            return num
        match = JOB_DIR.match(self.name)
        return int(match.group(1)) if match else None

    @property
    def history(self) -> list[dict]:
        return [row for row in self.data.get("history") or [] if isinstance(row, dict)]


@dataclass
class SweepInfo:
    """What the sweep dir itself says: the sweep's config (multirun.yaml) and Optuna's result."""

    monitor: str | None = None
    mode: str | None = None
    swept: list[str] = field(default_factory=list)  # "model=unet,fpn", sweeper params too
    fixed: list[str] = field(default_factory=list)  # the other command-line overrides
    optuna_best: list[dict] = field(default_factory=list)  # one params dict, or a Pareto front
    optuna_value: object = None


def find_job_dirs(sweep_dir: str | Path) -> list[Path]:
    """Subdirs holding a metrics.json, a ``.hydra`` dir, or named ``<num>_...``; in job order.

    Raises FileNotFoundError naming the dir if it does not exist or holds no job dirs.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep dir '{sweep_dir}' does not exist")
    dirs = [
        d for d in sweep_dir.iterdir()
        if d.is_dir() and not d.name.startswith(".")  # .submitit/ etc. are launcher files
        and ((d / METRICS_FILE).is_file() or (d / ".hydra").is_dir() or JOB_DIR.match(d.name))
    ]
    if not dirs:
        raise FileNotFoundError(
            f"no job dirs in '{sweep_dir}': expected subdirs like 0_unet-resnet18-dice/ holding "
            "metrics.json (is it a sweep dir, outputs/multirun/<date>/<time>?)")
    return sorted(dirs, key=lambda d: (int(m[1]) if (m := JOB_DIR.match(d.name)) else 1e9, d.name))


def load_job(job_dir: Path, finished: bool = False) -> Job:
    """A job from its dir, with its status: ``completed``, ``failed``, ``pruned``, ``running``, or
    ``interrupted`` (its process is gone: killed, preempted). A ``running`` metrics.json whose
    process no longer exists on this host, or any unfinished job once the sweep has ``finished``,
    is interrupted; a job on another host still running cannot be told from a dead one until then."""
    pending = "interrupted" if finished else "running"
    hydra_overrides = _read_yaml(job_dir / ".hydra" / "overrides.yaml")
    stub = {"overrides": hydra_overrides if isinstance(hydra_overrides, list) else []}
    path = job_dir / METRICS_FILE
    if not path.is_file():
        return Job(job_dir, stub, pending)
    try:
        data = load_json(path)  # written whole by segsweep: a broken one was damaged afterwards
    except ValueError as err:
        return Job(job_dir, {**stub, "error": f"unreadable {err}"}, "unreadable")
    data.setdefault("overrides", stub["overrides"])
    status = data.get("status") or ("completed" if "final" in data else "unknown")  # old files
    if status == "running" and (finished or process_alive(data.get("host"), data.get("pid")) is False):
        status = "interrupted"
    return Job(job_dir, data, str(status))


def load_jobs(sweep_dir: str | Path, finished: bool = False) -> list[Job]:
    """Every job of the sweep, in job order (see :func:`find_job_dirs`, :func:`load_job`), then the
    jobs the sweep planned that have no dir yet, as ``not started``."""
    jobs = [load_job(d, finished) for d in find_job_dirs(sweep_dir)]
    started = {job.num for job in jobs}
    for num, overrides in enumerate(planned_jobs(sweep_dir)):
        if num not in started:
            jobs.append(Job(Path(sweep_dir) / f"{num}_(not started)", {"job_num": num, "overrides": overrides},
                            "not started"))
    return jobs


def planned_jobs(sweep_dir: str | Path) -> list[list[str]]:
    """The override lists of every job the sweep's config (multirun.yaml) asks for.

    A grid sweep (Hydra's basic sweeper) is expanded as Hydra expands it; an Optuna search plans
    its ``n_trials`` jobs (the grid's size with the grid sampler, as its sweeper wrote in
    optimization_results.yaml; overrides unknown until sampled). Empty when unknown.
    """
    results = _read_yaml(Path(sweep_dir) / "optimization_results.yaml")
    if isinstance(results, dict) and isinstance(results.get("n_trials"), int):
        return [[] for _ in range(results["n_trials"])]
    config = _read_yaml(Path(sweep_dir) / "multirun.yaml")
    hydra = config.get("hydra") if isinstance(config, dict) else None
    if not isinstance(hydra, dict):
        return []
    sweeper = hydra.get("sweeper") or {}
    if isinstance(sweeper.get("n_trials"), int):
        return [[] for _ in range(sweeper["n_trials"])]
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return []
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # Hydra's own expansion
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{key}={value}" for key, value in sweeper_params(config).items()]
    overrides = [*params, *((hydra.get("overrides") or {}).get("task") or [])]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except Exception:  # an override this Hydra cannot parse: report what is on disk only
        return []


def read_sweep_info(sweep_dir: str | Path) -> SweepInfo:
    """The sweep's monitored metric, swept and fixed overrides (multirun.yaml: command line and
    sweeper params) and Optuna's best params (optimization_results.yaml); absent -> empty."""
    info = SweepInfo()
    config = _read_yaml(Path(sweep_dir) / "multirun.yaml")
    if isinstance(config, dict):
        info.monitor, info.mode = config.get("optimized_metric"), config.get("monitor_mode")
        hydra = config.get("hydra") if isinstance(config.get("hydra"), dict) else {}
        for override in (hydra.get("overrides") or {}).get("task") or []:
            value = str(override).partition("=")[2]
            (info.swept if SWEEP_VALUE.search(value) else info.fixed).append(str(override))
        params = sweeper_params(config)  # sweep presets, Optuna spaces
        info.swept += [f"{key}={spec}" for key, spec in params.items()]
    optuna = _read_yaml(Path(sweep_dir) / "optimization_results.yaml")
    if isinstance(optuna, dict):
        if isinstance(optuna.get("best_params"), dict):
            info.optuna_best, info.optuna_value = [optuna["best_params"]], optuna.get("best_value")
        else:  # multi-objective: every Pareto-optimal trial is "best"
            info.optuna_best = [s["params"] for s in optuna.get("solutions") or [] if "params" in s]
    return info


def sweeper_params(config: dict) -> dict:
    """multirun.yaml's ``hydra.sweeper.params`` as the sweeper saw them: Hydra saves them
    unresolved, so ``sweep=repeats``' ``${replica_seeds:${sweep.repeats}}`` is resolved here
    against the saved config (left as written if it cannot be)."""
    from omegaconf import OmegaConf

    from segsweep.resolvers import register

    params = ((config.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    try:
        register()
        return OmegaConf.to_container(OmegaConf.create(config).hydra.sweeper.params, resolve=True)
    except Exception:  # a resolver only Hydra's process has (${hydra:...}): keep the text
        return params


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):  # a half-written file must not stop the report
        return None
