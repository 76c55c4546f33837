"""hydra/launcher=gpus on CPU with simulated GPU ids: each job records the CUDA_VISIBLE_DEVICES it
saw and when it ran (tests/launcher_app.py; tests/launcher_probe.py inside segsweep-train)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import CONFIG_DIR, ROOT, TINY_ENCODER

from hydra_plugins.segsweep_gpu_launcher.slots import make_slots

TESTS = ROOT / "tests"


def sweep_app(tmp_path, *args, launcher=("hydra/launcher=gpus",), name="sweep", expect_ok=True):
    """Run tests/launcher_app.py as a multirun; return {job number: its record} and the process."""
    sweep = tmp_path / name
    done = subprocess.run([sys.executable, str(TESTS / "launcher_app.py"), "-m", f"hydra.searchpath=[file://{CONFIG_DIR}]",
                           *launcher, *args, f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert (done.returncode == 0) == expect_ok, done.stdout[-2000:] + done.stderr[-4000:]
    records = {int(job.name): json.loads((job / "record.json").read_text())
               for job in sweep.iterdir() if (job / "record.json").is_file()}
    return sweep, records, done


def overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def assert_no_shared_device(records: list[dict]) -> None:
    for a, b in itertools.combinations(records, 2):
        if set(a["gpus"].split(",")) & set(b["gpus"].split(",")):
            assert not overlap(a, b), (a, b)


def test_slots_split_the_listed_devices():
    assert [s.gpus for s in make_slots([0, 1, 2, 3], 2, pin_cpus=False)] == [("0", "1"), ("2", "3")]
    slots = make_slots(["GPU-a", "GPU-b"], 1)
    assert [s.cuda_visible_devices for s in slots] == ["GPU-a", "GPU-b"]
    cpus = [set(s.cpus) for s in slots]
    if len(os.sched_getaffinity(0)) >= 2:  # each slot its own, equal share of the CPUs
        assert cpus[0] and len(cpus[0]) == len(cpus[1]) and not cpus[0] & cpus[1]
    with pytest.raises(ValueError, match="3 ids .* gpus_per_job=2"):
        make_slots([0, 1, 2], 2)
    with pytest.raises(ValueError, match="lists a GPU twice"):
        make_slots([1, 1], 1)
    with pytest.raises(ValueError, match="gpus_per_job=0"):
        make_slots([0], 0)


def test_null_devices_take_the_visible_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert [s.gpus for s in make_slots(None, 1)] == [("4",), ("6",)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ValueError, match="devices is null and this process sees no GPU"):
        make_slots(None, 1)


def test_jobs_run_side_by_side_on_disjoint_slots_from_a_queue(tmp_path):
    # Job 0 sleeps 10x longer than jobs 1 and 2: with a queue, both short jobs run one after the
    # other on the second slot while job 0 still holds the first (fixed batches would make job 2 wait).
    _, records, _ = sweep_app(tmp_path, "hydra.launcher.devices=[3,5]", "+x=10,1,1", "+sleep=0.4")
    assert sorted(records) == [0, 1, 2]
    assert {r["gpus"] for r in records.values()} == {"3", "5"}
    assert_no_shared_device(list(records.values()))
    assert overlap(records[0], records[1]) and overlap(records[0], records[2])
    assert records[1]["gpus"] == records[2]["gpus"] != records[0]["gpus"]
    if len(os.sched_getaffinity(0)) >= 2:
        assert not set(records[0]["cpus"]) & set(records[1]["cpus"])


def test_a_job_that_dies_frees_its_slot_and_the_sweep_goes_on(tmp_path):
    # One slot; the middle job is killed (SIGKILL, as the kernel's OOM killer does).
    sweep, records, _ = sweep_app(tmp_path, "hydra.launcher.devices=[7]", "+x=1,2,3", "+die=2")
    assert sorted(records) == [0, 2] and records[2]["start"] > records[0]["end"]
    assert records[0]["gpus"] == records[2]["gpus"] == "7"
    failed = json.loads((sweep / "1" / "metrics.json").read_text())
    assert failed["status"] == "failed" and "signal 9" in failed["error"] and failed["overrides"] == ["+x=2", "+die=2"]


def test_a_raising_job_is_reported_as_the_basic_launcher_does(tmp_path):
    _, records, done = sweep_app(tmp_path, "hydra.launcher.devices=[0]", "+x=1,2", "+fail=1",
                                 expect_ok=False)
    assert "failed on purpose" in done.stderr
    assert list(records) == [1] and records[1]["gpus"] == "0"  # the next job still ran


def test_job_dirs_and_hydra_files_match_the_basic_launcher(tmp_path):
    grid = ("+x=1,2", "+sleep=0")
    basic, _, _ = sweep_app(tmp_path, *grid, launcher=(), name="basic")
    gpus, _, _ = sweep_app(tmp_path, *grid, "hydra.launcher.devices=[0,1]", name="gpus")

    def job_files(sweep):
        jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
        for job in jobs:
            hydra = yaml.safe_load((sweep / job / ".hydra" / "hydra.yaml").read_text())["hydra"]
            yield (job, (sweep / job / ".hydra" / "config.yaml").read_text(),
                   (sweep / job / ".hydra" / "overrides.yaml").read_text(), hydra["job"], hydra["overrides"]["task"])

    assert list(job_files(basic)) == list(job_files(gpus))
