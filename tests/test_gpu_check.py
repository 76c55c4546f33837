"""scripts/gpu_check.py cannot rot: its --dry-run runs every part on CPU at tiny sizes and must give
figures for each; the sync counter, which only a GPU feeds, is checked here with a warning of its own."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
# Each part and the figures its row must have, as finite numbers.
FIGURES = {
    "model:unet_r34": ["step_ms", "images_s", "tflop_per_step", "tflops", "peak_memory_mb"],
    "model:classic_unet": ["step_ms", "images_s", "tflop_per_step", "tflops", "peak_memory_mb"],
    "unet3d": ["step_ms", "images_s", "tflop_per_step", "peak_memory_mb"],
    "data": ["images_s", "per_worker", "render_ms"],
    "overhead": ["bare_step_ms", "segsweep_step_ms", "extra_ms", "extra_pct", "syncs_per_step", "bare_syncs_per_step"],
    "model:unet_r34+compile": ["step_ms", "images_s", "tflops", "peak_memory_mb", "compile_s"],
    "model:classic_unet+compile": ["step_ms", "images_s", "tflops", "peak_memory_mb", "compile_s"],
    "multi_gpu": ["sweep_s", "ddp_s"],
}


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dry_run_gives_every_part_with_numbers(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report["parts"]) == list(FIGURES)  # every part, in the script's order
    for part, keys in FIGURES.items():
        row = report["parts"][part]
        assert row["status"] == "ok", f"{part}: {row['status']}\n{row.get('traceback', '')}"
        for key in keys:
            assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), f"{part}.{key} = {row.get(key)}"
    parts = report["parts"]
    assert parts["unet3d"]["channels_last_3d"] is True  # trainer=gpu's conversion of the 3D net
    assert set(parts["data"]["workers"]) == {"1", "2"} and parts["overhead"]["timed_steps"] == 3
    assert parts["multi_gpu"]["sweep_jobs"] == ["completed", "completed"]
    assert len(parts["overhead"]["syncs_by_step"]) == 5  # the counted steps (none on CPU)
    # the table comes last (the caller sees only the tail), one row per part
    table = proc.stdout[proc.stdout.rindex("segsweep GPU check:"):]
    assert all(part in table for part in FIGURES) and table.rstrip().endswith(str(out))
    again = subprocess.run([sys.executable, str(SCRIPT), "--table", str(out)], env=env, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.strip() == table.strip()


def synchronize_here():
    warnings.warn("called a synchronizing CUDA operation", stacklevel=1)  # as set_sync_debug_mode("warn")


def test_the_sync_counter_counts_per_step_and_names_the_line():
    gpu_check = load_script()
    counter = gpu_check.SyncCounter(cuda=False)
    counter.start()
    try:
        synchronize_here()
        counter.mark()
        counter.mark()
        synchronize_here()
        synchronize_here()
        warnings.warn("something else", stacklevel=1)  # not counted
        counter.mark()
    finally:
        counter.stop()
    counter.stop()  # idempotent: parts call it again in their clean-up
    summary = counter.summary()
    assert summary["syncs_by_step"] == [1, 0, 2] and summary["syncs_per_step"] == 1.0
    [(site, found)] = summary["sync_sites"].items()
    assert "test_gpu_check.py:" in site and site.endswith(" synchronize_here") and found["count"] == 3
    assert any(frame.endswith(" test_the_sync_counter_counts_per_step_and_names_the_line") for frame in found["stack"])
    with warnings.catch_warnings(record=True) as caught:  # the filters and display are back
        warnings.simplefilter("always")
        synchronize_here()
    assert len(caught) == 1 and counter.count == 3
