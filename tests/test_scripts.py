"""The benchmark scripts still run (tiny settings): a figure in docs/ must stay reproducible."""

from __future__ import annotations

import runpy
import sys

from conftest import ROOT

TINY_RUN = ["data.dataset.image_size=64", "data.splits.train.num_images=8", "data.splits.val.num_images=2",
            "callbacks=none", "logger=csv", "+trainer.enable_progress_bar=false"]


def run_script(name, args, monkeypatch, capsys) -> str:
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # as when run: the script's own folder first
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(ROOT / "scripts" / name), run_name="__main__")
    return capsys.readouterr().out


def test_bench_overhead_prints_the_extra_time_per_step(monkeypatch, capsys):
    out = run_script("bench_overhead.py", ["--steps", "3", "--rounds", "1", *TINY_RUN], monkeypatch, capsys)
    assert "round 1:" in out and "segsweep fixed cost per run" in out
    assert "segsweep extra per step (wall time): median" in out and "(CPU time)" in out


def test_bench_throughput_measures_data_model_and_whole_step(monkeypatch, capsys):
    out = run_script("bench_throughput.py", ["--size", "32", "--batch", "2", "--steps", "2", "--warmup", "1",
                                             "--models", "classic_unet", "trainer=cpu", "model.base_width=4",
                                             *TINY_RUN], monkeypatch, capsys)
    line = next(line for line in out.splitlines() if line.startswith("classic_unet"))
    assert "(a) data" in line and "(b) model" in line and "(c) step" in line and "data/model" in line
    assert "GFLOP/s" in out


def test_bench_tiling_runs_with_or_without_monai(monkeypatch, capsys):
    """docs/benchmarks.md, "Sliding-window inference": the comparison script still runs (MONAI is
    not a dependency: without it, it says so and runs ours alone)."""
    out = run_script("bench_tiling.py", ["--rounds", "0", "--width", "2"], monkeypatch, capsys)
    assert "== 3D 40x160x160" in out and "ours" in out
    assert "MONAI is NOT installed" in out or "vs ours max" in out
