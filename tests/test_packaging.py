"""segsweep as users install it: a wheel (not the checkout) runs from any directory with the shipped
configs, a user's own config folder composes with them, and importing segsweep sets nothing up."""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import FAST, ROOT
from hydra.core.global_hydra import GlobalHydra

CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}

# Run in a fresh interpreter: imports the third-party modules segsweep's modules import at their
# top level, takes a snapshot of the process-wide state, imports segsweep's modules, and prints
# what changed. Third-party imports come first so only segsweep's own module code is judged.
IMPORT_PROBE = textwrap.dedent('''
    import ast, importlib, json, logging, os, sys, warnings
    from pathlib import Path
    from omegaconf.basecontainer import BaseContainer

    package = Path(sys.argv[1])
    entry_points = {"segsweep.train", "segsweep.eval", "segsweep.predict"}
    modules, third_party = [], set()
    for path in sorted(package.rglob("*.py")):
        if "conf" in path.relative_to(package).parts:
            continue
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        for node in ast.parse(path.read_text()).body:  # module level only: what runs at import
            if isinstance(node, ast.Import):
                third_party.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                third_party.add(node.module)
                third_party.update(f"{node.module}.{alias.name}" for alias in node.names)
    for name in sorted(third_party):
        if name.split(".")[0] not in ("segsweep", "__future__"):
            try:
                importlib.import_module(name)
            except ImportError:
                pass  # "from x import function": not a module

    def state():
        loggers = [logging.getLogger(), *(logging.getLogger(n) for n in logging.root.manager.loggerDict)]
        return {
            "warnings filters": [repr(f) for f in warnings.filters],
            "logger levels": {lg.name: lg.level for lg in loggers if lg.level != logging.NOTSET},
            "root handlers": [repr(h) for h in logging.getLogger().handlers],
            "environment": dict(os.environ),
            "resolvers": sorted(BaseContainer._resolvers),
        }

    def diff(before, after):
        return {k: [before[k], after[k]] for k in before if before[k] != after[k]}

    before = state()
    importlib.import_module("segsweep")
    report = {"import segsweep": diff(before, state())}
    for name in modules:
        if name not in entry_points:
            importlib.import_module(name)
    report["library modules"] = diff(before, state())
    for name in sorted(entry_points):
        importlib.import_module(name)
    after = state()
    report["entry points"] = diff(before, after)
    report["entry point resolvers"] = sorted(set(after["resolvers"]) - set(before["resolvers"]))
    print(json.dumps(report))
''')


def test_importing_segsweep_changes_no_global_state():
    """``import segsweep`` and every library module change no warnings filter, logger level,
    handler, environment variable or OmegaConf resolver; the entry points add the resolvers only."""
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, str(ROOT / "src" / "segsweep")],
        capture_output=True, text=True, env=CLEAN_ENV, cwd=ROOT, timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["import segsweep"] == {}
    assert report["library modules"] == {}
    changed = report["entry points"]
    assert set(changed) <= {"resolvers"}, changed
    assert {"join_name", "sweep_group", "task_labels"} <= set(report["entry point resolvers"])


def test_checkout_reads_the_one_config_folder():
    """From the checkout (the editable install), the packaged configs are conf/ itself, not a copy."""
    from segsweep.losses.build import LOSS_CONF_DIR
    from segsweep.train import CONFIG_DIR

    assert Path(CONFIG_DIR).resolve() == ROOT / "conf"
    assert Path(str(LOSS_CONF_DIR)).resolve() == ROOT / "conf" / "loss"


# -- a user's own config folder ---------------------------------------------------------------


def user_configs(root: Path) -> Path:
    """~/my-exps as a user writes it: an experiment overlay and a task config of their own name."""
    (root / "experiment").mkdir(parents=True)
    (root / "experiment" / "foo.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        defaults:
          - override /loss: dice
        model:
          base_width: 8
          depth: 2
        seed: 7
    """))
    (root / "task").mkdir()
    (root / "task" / "my_classes.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        task:
          _target_: segsweep.tasks.SemanticSegmentationTask
    """))
    return root


def run_app(monkeypatch, capsys, *args: str) -> str:
    """``segsweep-train <args>`` in this process (for options that stop before training)."""
    from segsweep.train import main

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["segsweep-train", *args])
    try:
        main()
    except SystemExit as exit_:  # --help exits
        assert exit_.code in (0, None)
    finally:
        GlobalHydra.instance().clear()
    return capsys.readouterr().out


def listed_groups(help_text: str) -> dict[str, set[str]]:
    """The ``group: choice, choice`` lines of Hydra's ``--help``."""
    section = help_text.split("== Configuration groups ==")[1].split("== Config ==")[0]
    pairs = (line.split(": ", 1) for line in section.splitlines() if ": " in line)
    return {group: set(choices.split(", ")) for group, choices in pairs}


def test_help_lists_config_groups_and_choices(monkeypatch, capsys, tmp_path):
    text = run_app(monkeypatch, capsys, "--config-dir", str(user_configs(tmp_path / "my-exps")), "--help")
    assert text.startswith("segsweep-train (segsweep:")  # the app's own name, not "train is powered by Hydra"
    groups = listed_groups(text)
    assert groups["task"] == {"binary", "instance", "semantic", "my_classes"}  # the user's own choice too
    assert {"foo", "isbi2012"} <= groups["experiment"]
    assert {"csv", "none", "tensorboard", "wandb"} <= groups["logger"]
    assert {"classic_unet", "unet", "fpn", "maskrcnn"} <= groups["model"] and "bce_dice" in groups["loss"]


@pytest.mark.parametrize("how", ["config-dir", "searchpath"])
def test_a_user_config_folder_composes_with_the_shipped_one(monkeypatch, capsys, tmp_path, how):
    """``--config-dir ~/my-exps`` or ``hydra.searchpath=[file://~/my-exps]``: the user's experiment
    and task overlay the shipped groups; the built-in data follows the task's class, not its
    config's file name."""
    folder = user_configs(tmp_path / "my-exps")
    where = ["--config-dir", str(folder)] if how == "config-dir" else [f"hydra.searchpath=[file://{folder}]"]
    composed = yaml.safe_load(run_app(monkeypatch, capsys, *where, "experiment=foo", "task=my_classes",
                                      "--cfg", "job", "--resolve"))
    assert composed["seed"] == 7 and composed["model"]["base_width"] == 8
    assert composed["loss"]["_target_"].endswith("DiceLoss") and composed["run_name"] == "classic_unet-dice"
    assert composed["data"]["dataset"]["target"] == "semantic"


# -- the wheel ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with segsweep installed from a wheel built from a clean copy of the checkout
    (as ``pip install git+URL`` builds it); the dependencies come from the project's environment
    through a ``.pth`` file, so nothing is downloaded and torch is not reinstalled.
    Returns the venv's ``bin`` folder."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "outputs")
    for name in ("src", "conf"):
        shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", work / "dist", source],
                   check=True, cwd=work, env=CLEAN_ENV, timeout=300)
    wheel = next((work / "dist").glob("segsweep-*.whl"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (purelib / "project_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    python = venv / "bin" / "python"
    # --ignore-installed: the checkout's editable segsweep is visible through the .pth; the wheel
    # goes into the fresh venv beside it and comes first on sys.path.
    subprocess.run([str(python), "-m", "pip", "-q", "--disable-pip-version-check", "install", "--no-deps",
                    "--no-index", "--ignore-installed", wheel], check=True, cwd=work, env=CLEAN_ENV, timeout=300)
    where = subprocess.run([str(python), "-c", "import segsweep.train; print(segsweep.train.CONFIG_DIR)"],
                           capture_output=True, text=True, check=True, cwd=work, env=CLEAN_ENV, timeout=120)
    config_dir = Path(where.stdout.strip())
    assert config_dir.is_relative_to(venv) and (config_dir / "train.yaml").is_file(), config_dir
    return venv / "bin"


# Measured: the three tests below took 178 s together on 2 busy cores (wheel build + install 46 s,
# each segsweep-train start ~10 s): over the 30 s of the default run, so marked slow.
@pytest.mark.slow
def test_wheel_ships_every_config(installed):
    """Every YAML file of conf/ is in the wheel, under segsweep/conf/."""
    wheel = next(installed.parent.parent.glob("dist/segsweep-*.whl"))
    shipped = {n.removeprefix("segsweep/conf/") for n in zipfile.ZipFile(wheel).namelist()
               if n.startswith("segsweep/conf/") and n.endswith(".yaml")}
    assert shipped == {str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*.yaml")}


def run_installed(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([str(installed / "segsweep-train"), *args], capture_output=True, text=True,
                         cwd=cwd, env={**CLEAN_ENV, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_installed_train_runs_from_any_directory(installed, tmp_path):
    """``segsweep-train`` of the wheel trains from a folder outside the checkout, writing its
    outputs there (default data, model and loss from the shipped configs)."""
    run_installed(installed, tmp_path, *FAST, "model.base_width=8", "model.depth=2")
    (metrics_path,) = tmp_path.glob("outputs/runs/*/*/metrics.json")
    metrics = json.loads(metrics_path.read_text())
    assert metrics["status"] == "completed"
    assert metrics["run_name"] == "classic_unet-bce_dice"
    assert 0 <= metrics["final"]["test/iou"] <= 1


@pytest.mark.slow
def test_installed_train_composes_a_user_config_dir(installed, tmp_path):
    """``--config-dir ~/my-exps experiment=foo`` with the wheel: the user's experiment overlays the
    shipped groups and trains; ``--help`` lists the shipped groups and the user's choices."""
    user_configs(tmp_path / "my-exps")
    run_installed(installed, tmp_path, "--config-dir", "my-exps", "experiment=foo", *FAST)
    (job,) = tmp_path.glob("outputs/runs/*/*")
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["run_name"] == "classic_unet-dice"
    assert metrics["choices"]["experiment"] == "foo"
    assert "seed: 7" in (job / ".hydra" / "config.yaml").read_text()
    groups = listed_groups(run_installed(installed, tmp_path, "--config-dir", "my-exps", "--help").stdout)
    assert {"foo", "isbi2012"} <= groups["experiment"] and "my_classes" in groups["task"]
    assert {"classic_unet", "unet", "maskrcnn"} <= groups["model"]


def test_the_readme_group_table_names_every_shipped_choice():
    """The README promises every config group with its choices: each file of each group in conf/
    (and each launcher segsweep ships) is named in that group's row."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 2:
            for group in re.findall(r"`([^`]+)`", cells[0]):
                rows[group] = set(re.findall(r"`([^`]+)`", cells[1]))
    groups = {"optimizer": "optimizer", "scheduler": "optimizer", "hydra/launcher": "hydra/launcher"}
    missing = []
    for folder in sorted(p for p in (ROOT / "conf").rglob("*") if p.is_dir()):
        group = folder.relative_to(ROOT / "conf").as_posix()
        if group in ("hydra", "paths", "local") or not list(folder.glob("*.yaml")):  # not choices
            continue
        row = rows.get(groups.get(group, group))
        assert row is not None, f"README's group table has no row for conf/{group}"
        missing += [f"{group}={p.stem}" for p in folder.glob("*.yaml") if p.stem not in row]
    assert not missing, f"README's group table omits: {missing}"


def test_each_room_imports_only_the_rooms_docs_architecture_allows():
    """docs/architecture.md's room table says what each room may import: every segsweep import
    (lazy ones inside functions too) of every module keeps to it."""
    import ast

    allowed: dict[str, set[str] | None] = {}
    in_table = False
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        if line.startswith("| room |"):
            in_table = True
        elif in_table and not line.startswith("|"):
            break
        elif in_table and line.startswith("| `"):
            room_cell, _, may_cell = (c.strip() for c in line.strip().strip("|").split("|"))
            may = None if may_cell.startswith("any room") else set(re.findall(r"`([a-z_]+)`", may_cell))
            for room in re.findall(r"`([a-z_/*]+)`", room_cell):
                allowed[room.removesuffix("/*")] = may
    assert {"data", "models", "tasks", "jobs", "reporting", "hydra_plugins"} <= set(allowed), allowed

    package = ROOT / "src" / "segsweep"
    wrong = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        parts = path.relative_to(ROOT / "src").parts
        room = "hydra_plugins" if parts[0] == "hydra_plugins" else parts[1].removesuffix(".py")
        if path.parent == package and room == "__init__":
            continue
        assert room in allowed, f"{path.relative_to(ROOT)}: room {room!r} is not in docs/architecture.md"
        may = allowed[room]
        if may is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                target = name.split(".")[1] if name.startswith("segsweep.") else None
                if target and target != room and target not in may:
                    wrong.append(f"{path.relative_to(ROOT)} imports {name} ({room} may import {sorted(may)})")
    assert not wrong, "\n".join(wrong)
