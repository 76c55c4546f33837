"""Sweep reports from hand-written sweep dirs: ranking, statuses, files, CLI and Hydra callback."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image

from segsweep.reporting import collect, write_report
from segsweep.reporting.cli import main as report_main
from segsweep.reporting.hydra_callback import LeaderboardCallback
from segsweep.reporting.jobs import load_jobs
from segsweep.reporting.leaderboard import build_frame
from segsweep.reporting.plots import metric_bars

PNG_MAGIC = b"\x89PNG"
# job num -> (model, loss, best val/iou, best val/loss): ranked by val/iou 1, 2, 0, 3;
# by val/loss 3, 2, 1, 0.
GRID = {0: ("unet", "dice", 0.80, 0.30), 1: ("unet", "jaccard", 0.90, 0.20),
        2: ("fpn", "dice", 0.85, 0.15), 3: ("fpn", "jaccard", 0.70, 0.10)}


def completed(num: int, overrides: list[str], iou: float, loss: float, name: str) -> dict:
    history = [{"epoch": e, "step": 4 * (e + 1), "val/iou": iou - 0.1 * (2 - e),
                "val/loss": loss + 0.1 * (2 - e)} for e in range(3)]
    return {
        "status": "completed", "run_name": name, "monitor": "val/iou", "monitor_mode": "max",
        "final": {"val/iou": iou - 0.01, "val/dice": iou + 0.03, "val/loss": loss, "val/acc": None,
                  "val/iou/background": 0.99, "val/iou/shape": iou, "train/loss_epoch": 0.2,
                  "test/iou": iou - 0.02},
        "best": {"val/iou": iou, "val/loss": loss},
        "best_checkpoint": f"checkpoints/epoch002-{num}.ckpt", "params": 14328209, "epochs": 3,
        "global_step": 12, "wall_time_s": 10.5 + num, "images_per_second": 40.0,
        "overrides": overrides, "choices": {}, "job_num": num, "multirun": True, "history": history,
    }


def write_job(sweep, name: str, payload: dict | None = None, overrides: list[str] | None = None):
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides or []))
    if payload is not None:
        (job / "metrics.json").write_text(json.dumps(payload))
    return job


@pytest.fixture
def sweep(tmp_path):
    """A 2 x 2 model x loss grid (4 completed), one failed and one still running job."""
    sweep = tmp_path / "multirun" / "2025-01-31" / "12-00-00"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({
        "optimized_metric": "val/iou", "monitor_mode": "max",
        "hydra": {"overrides": {"task": ["model=unet,fpn", "loss=dice,jaccard,lovasz"]}}}))
    for num, (model, loss, iou, val_loss) in GRID.items():
        overrides = [f"model={model}", f"loss={loss}", "trainer=cpu"]
        name = f"{model}-resnet18-{loss}"
        write_job(sweep, f"{num}_{name}", completed(num, overrides, iou, val_loss, name), overrides)
    failed = ["model=fpn", "loss=lovasz", "trainer=cpu"]
    write_job(sweep, "4_fpn-resnet18-lovasz", {
        "status": "failed", "error": "ValueError: lovasz | exploded", "traceback": "Traceback ...",
        "run_name": "fpn-resnet18-lovasz", "monitor": "val/iou", "wall_time_s": 3.1,
        "overrides": failed, "choices": {}, "job_num": 4, "multirun": True}, failed)
    write_job(sweep, "5_unet-resnet18-lovasz", None, ["model=unet", "loss=lovasz", "trainer=cpu"])
    predictions = sweep / "1_unet-resnet18-jaccard" / "predictions"
    predictions.mkdir()
    Image.new("RGB", (24, 8), (200, 30, 30)).save(predictions / "epoch_002.png")
    return sweep


def test_collect_ranks_best_first_then_failed_then_running(sweep):
    df = collect(sweep)
    assert df["job"].tolist() == [
        "1_unet-resnet18-jaccard", "2_fpn-resnet18-dice", "0_unet-resnet18-dice",
        "3_fpn-resnet18-jaccard", "4_fpn-resnet18-lovasz", "5_unet-resnet18-lovasz"]
    assert df["status"].tolist() == ["completed"] * 4 + ["failed", "running"]
    assert df["rank"].tolist()[:4] == [1, 2, 3, 4] and df["rank"].isna()[4:].all()
    assert df.attrs["metric"] == "val/iou" and df.attrs["mode"] == "max"
    assert df.attrs["swept_keys"] == ["model", "loss"]  # trainer=cpu is the same everywhere
    failed = df.set_index("job").loc["4_fpn-resnet18-lovasz"]
    assert failed["error"].startswith("ValueError") and pd.isna(failed["best val/iou"])
    running = df.set_index("job").loc["5_unet-resnet18-lovasz"]
    assert running["model"] == "unet" and running["loss"] == "lovasz"  # from .hydra/overrides.yaml
    assert df.loc[0, "best val/iou"] == 0.90 and df.loc[0, "test/iou"] == pytest.approx(0.88)
    assert pd.isna(df.loc[0, "val/acc"])  # null in metrics.json
    assert "val/iou/shape" in df.columns and "train/loss_epoch" not in df.columns


def test_min_mode_metric_ranks_lowest_first(sweep):
    df = collect(sweep, metric="val/loss")  # a loss: min is better without being told
    assert df.attrs["mode"] == "min"
    assert df["job_num"].tolist()[:4] == [3, 2, 1, 0]
    assert collect(sweep, metric="val/iou", mode="min")["job_num"].tolist()[:4] == [3, 0, 2, 1]


def test_finished_sweep_marks_jobs_without_metrics_interrupted(sweep):
    df = collect(sweep, finished=True).set_index("job")
    assert df.loc["5_unet-resnet18-lovasz", "status"] == "interrupted"


def test_a_truncated_metrics_json_is_unreadable_with_its_reason_printed(sweep, capsys):
    """Not 'running' (nothing runs it) nor 'interrupted': damaged; the console says why."""
    (sweep / "0_unet-resnet18-dice" / "metrics.json").write_text('{"status": "compl')  # truncated
    for finished in (False, True):
        df = collect(sweep, finished=finished).set_index("job")
        assert df.loc["0_unet-resnet18-dice", "status"] == "unreadable"
        assert "JSONDecodeError" in df.loc["0_unet-resnet18-dice", "error"]
    assert report_main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    assert "Unreadable: `0_unet-resnet18-dice`: unreadable" in printed and "metrics.json: JSONDecodeError" in printed


def test_write_report_files(sweep):
    paths = write_report(sweep)
    assert {p.name for p in paths.values()} == {"leaderboard.csv", "leaderboard.md", "report.html",
                                                "bar_val_iou.png", "curves_val_iou.png"}
    assert all(p.parent == sweep for p in paths.values())
    csv = pd.read_csv(paths["csv"])
    assert len(csv) == 6 and csv["job_num"].tolist() == [1, 2, 0, 3, 4, 5]
    assert csv.loc[4, "status"] == "failed" and "exploded" in csv.loc[4, "error"]
    assert "val/iou/background" in csv.columns  # per-class: CSV only
    markdown, html = paths["markdown"].read_text(), paths["html"].read_text()
    assert "4 completed, 1 failed, 1 running" in markdown and "best val/iou" in markdown
    header = next(line for line in markdown.splitlines() if "| job " in line)
    assert "val/iou/background" not in header and "trainer" not in header  # not swept
    assert "14,328,209" in markdown and "0.9000" in markdown and r"lovasz \| exploded" in markdown
    for name in (p.name for p in sweep.iterdir() if p.is_dir()):
        assert name in markdown and name in html
    assert "data:image/png;base64," in html
    assert "Validation predictions of 1_unet-resnet18-jaccard" in html  # the best job's PNG
    assert "Traceback ..." in html  # the failed job's traceback, collapsed
    for kind in ("bar", "curves"):
        assert paths[kind].read_bytes().startswith(PNG_MAGIC)


def test_two_swept_keys_give_grouped_bars_and_optuna_gives_one_bar_per_job(sweep, tmp_path):
    grouped = metric_bars(collect(sweep)).axes[0]
    assert grouped.get_xlabel() == "model" and grouped.get_legend().get_title().get_text() == "loss"
    optuna = tmp_path / "optuna"
    for num, lr in enumerate((0.0012, 0.00012, 0.004)):  # trial number = job num
        overrides = [f"optimizer.lr={lr}", "loss=dice" if num else "loss=jaccard"]
        payload = completed(num, overrides, 0.7 + lr * 10, 0.2, "unet-resnet18-dice")
        write_job(optuna, f"{num}_unet-resnet18-dice", payload)
    (optuna / "optimization_results.yaml").write_text(yaml.safe_dump({
        "name": "optuna", "best_params": {"optimizer.lr": 0.004, "loss": "dice"},
        "best_value": 0.74}))
    df = collect(optuna)
    assert df["optimizer.lr"].tolist() == [0.004, 0.0012, 0.00012]  # numbers, best first
    assert df["optuna_best"].tolist() == [True, False, False]
    labels = [t.get_text() for t in metric_bars(df).axes[0].get_yticklabels()]
    assert labels[-1] == "#2 optimizer.lr=0.004, loss=dice"  # one bar per trial, best on top
    markdown = write_report(optuna)["markdown"].read_text()
    assert "Optuna best value: 0.74" in markdown
    assert " 0.00012 " in markdown  # overrides keep 4 significant digits, not 4 decimals


def test_no_completed_job_still_writes_the_table(tmp_path):
    sweep = tmp_path / "sweep"
    write_job(sweep, "0_unet-resnet18-dice", {"status": "failed", "error": "RuntimeError: CUDA OOM",
                                              "overrides": ["model=unet"], "job_num": 0})
    write_job(sweep, "1_fpn-resnet18-dice", None, ["model=fpn"])
    paths = write_report(sweep)
    assert set(paths) == {"csv", "markdown", "html"}  # nothing to plot
    markdown = paths["markdown"].read_text()
    assert "0 completed, 1 failed, 1 running" in markdown and "No completed job" in markdown
    assert "0_unet-resnet18-dice" in paths["html"].read_text()


def test_build_frame_tolerates_old_and_partial_files(tmp_path):
    write_job(tmp_path, "0_old", {"final": {"val/iou": 0.5}})  # no status, monitor, overrides
    df = build_frame(load_jobs(tmp_path))
    assert df.loc[0, "status"] == "completed" and df.loc[0, "best val/iou"] == 0.5


def test_cli_prints_leaderboard_and_paths(sweep, capsys):
    assert report_main([str(sweep), "--metric", "val/dice"]) == 0
    out = capsys.readouterr().out
    assert "best val/dice" in out and "1_unet-resnet18-jaccard" in out and "report.html" in out
    assert report_main([str(sweep), "--quiet"]) == 0
    assert "| job" not in capsys.readouterr().out


@pytest.mark.parametrize("subdir, message", [("nope", "does not exist"), ("", "no job dirs")])
def test_cli_bad_dir_exits_2_naming_it(tmp_path, capsys, subdir, message):
    target = tmp_path / subdir
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(target)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"'{target}'" in err and message in err
    assert not (tmp_path / "nope").exists()  # nothing created on the way


def test_hydra_callback_writes_report_and_never_raises(sweep, tmp_path, caplog):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    with caplog.at_level(logging.INFO):
        LeaderboardCallback().on_multirun_end(config=config, config_name="train")
    assert (sweep / "report.html").is_file() and "report.html" in caplog.text
    assert "1 interrupted" in (sweep / "leaderboard.md").read_text()  # the sweep is over: not running
    bad = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "nope")}}})
    LeaderboardCallback().on_multirun_end(bad)  # logged, not raised
    assert "Could not write the sweep report" in caplog.text


def test_the_report_imports_neither_torch_nor_lightning():
    """segsweep-report starts in a blink and runs where no torch is installed (a laptop reading a
    cluster's sweep dir)."""
    import subprocess
    import sys

    code = ("import sys, segsweep.reporting.cli, segsweep.reporting.report, segsweep.reporting.hydra_callback\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lightning', 'pytorch_lightning'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
