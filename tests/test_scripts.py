"""The benchmark scripts still run (tiny settings): a figure in docs/ must stay reproducible."""

from __future__ import annotations

import runpy
import sys

from conftest import ROOT


def test_bench_overhead_prints_a_ratio(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_overhead.py", "--steps", "2", "--rounds", "1",
                                      "data.dataset.image_size=64", "data.splits.train.num_images=8",
                                      "data.splits.val.num_images=2", "data.batch_size=4", "callbacks=none",
                                      "+trainer.enable_progress_bar=false"])
    runpy.run_path(str(ROOT / "scripts" / "bench_overhead.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "segsweep / bare: median" in out and "round 1:" in out
