"""Hydra multiruns: job dirs, a failed job that does not stop the sweep, W&B groups (Optuna: test_optuna.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
from conftest import TINY_ENCODER

TINY = ["trainer=cpu", "trainer.max_epochs=1", f"encoder={TINY_ENCODER}", "data.dataset.image_size=64",
        "data.splits.train.num_images=8", "data.splits.val.num_images=4", "data.splits.test.num_images=4",
        "data.batch_size=4", "augment.crop_size=64", "callbacks.image_logger.every_n_epochs=1"]


def multirun(tmp_path, *args):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "", "WANDB_API_KEY": "", "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "segsweep.train", "-m", *TINY, *args, f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return sweep


def test_grid_with_an_impossible_job_goes_on_and_reports(tmp_path):
    # smp's Unet cannot take encoder_depth=3 with its default decoder: that one job fails.
    sweep = multirun(tmp_path, "model=unet,fpn", "+model.encoder_depth=5,3", "logger=wandb")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert len(jobs) == 4
    results = {job.name: json.loads((job / "metrics.json").read_text()) for job in jobs}
    failed = [name for name, r in results.items() if r["status"] == "failed"]
    assert len(failed) == 1 and "+model.encoder_depth=3" in results[failed[0]]["overrides"]
    assert "unet" in results[failed[0]]["error"].lower()

    board = pd.read_csv(sweep / "leaderboard.csv")
    assert len(board) == 4 and list(board["status"]) == ["completed"] * 3 + ["failed"]
    best = board.iloc[0]["best val/iou"]
    assert best == max(r["best"]["val/iou"] for r in results.values() if r["status"] == "completed")
    assert (sweep / "leaderboard.md").is_file() and (sweep / "report.html").is_file()

    # W&B: each job wrote one offline run, and every run records the sweep's group. The run file
    # is wandb's binary log (no Python reader ships with wandb 0.31): look for the group's bytes.
    group = "_".join(sweep.parts[-2:]).encode()
    for job in (job for job in jobs if results[job.name]["status"] == "completed"):
        runs = list(job.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(runs) == 1, job
        assert group in runs[0].read_bytes() and job.name.split("_", 1)[1].encode() in runs[0].read_bytes()

