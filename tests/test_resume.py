"""Never lose a result: real processes killed with SIGKILL, resumed, re-run; job dirs of one config.

Expected values come from a second, uninterrupted run of the same command (CPU runs are
bit-reproducible), never from the resumed run itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# Random crops and flips on (augment=default): the resumed epochs must see the same ones.
TINY = ["trainer=cpu", "data.dataset.image_size=64", "data.splits.train.num_images=8",
        "data.splits.val.num_images=4", "data.splits.test.num_images=4", "data.batch_size=4",
        "augment.crop_size=48", "model.base_width=8", "model.depth=3", "callbacks=default", "~callbacks.progress_bar",
        "~callbacks.image_logger", "logger=csv", "+trainer.enable_model_summary=false"]


def command(*args: str, module: str = "segsweep.train") -> list[str]:
    return [sys.executable, "-m", module, *args]


def environment(tmp_path: Path) -> dict:
    return {**os.environ, "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}


def run(tmp_path: Path, *args: str, ok: bool = True, module: str = "segsweep.train") -> subprocess.CompletedProcess:
    done = subprocess.run(command(*args, module=module), cwd=tmp_path, env=environment(tmp_path),
                          capture_output=True, text=True, timeout=600)
    if ok:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def kill_when(tmp_path: Path, args: list[str], ready, timeout: float = 300) -> None:
    """Start the command in its own process group; SIGKILL the whole group once ``ready()``."""
    process = subprocess.Popen(command(*args), cwd=tmp_path, env=environment(tmp_path),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while not ready():
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "timed out waiting to kill the run"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def metrics(job_dir: Path) -> dict:
    try:
        return json.loads((job_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def epochs_done(job_dir: Path) -> int:
    """Validation epochs recorded by the running job (its metrics.json is rewritten each epoch)."""
    return len(metrics(job_dir).get("history") or [])


def weights(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def same_run(resumed: dict, reference: dict) -> None:
    """Everything but timings is equal, exactly."""
    assert resumed["history"] == reference["history"]
    assert resumed["best"] == reference["best"] and resumed["final"] == reference["final"]
    assert (resumed["epochs"], resumed["global_step"]) == (reference["epochs"], reference["global_step"])


def test_a_killed_run_resumes_bit_identical_to_an_uninterrupted_run(tmp_path):
    args = [*TINY, "trainer.max_epochs=5"]
    run(tmp_path, *args, f"hydra.run.dir={tmp_path / 'straight'}")
    killed = tmp_path / "killed"
    kill_when(tmp_path, [*args, f"hydra.run.dir={killed}"],
              lambda: epochs_done(killed) >= 2 and (killed / "checkpoints" / "last.ckpt").is_file())
    assert metrics(killed)["status"] == "running"
    run(tmp_path, *args, f"hydra.run.dir={killed}")

    resumed, reference = metrics(killed), metrics(tmp_path / "straight")
    assert resumed["status"] == "completed" and resumed["attempts"] == 2
    same_run(resumed, reference)
    assert [row["epoch"] for row in resumed["history"]] == [0, 1, 2, 3, 4]
    assert resumed["wall_time_s"] > 0
    for a, b in zip(weights(killed / "checkpoints" / "last.ckpt").values(),
                    weights(tmp_path / "straight" / "checkpoints" / "last.ckpt").values(), strict=True):
        assert torch.equal(a, b)
    # The CSV logger went on in the same file, and the steps the killed attempt logged and the
    # resumed one logged again (learning rate, losses) are there once: the same cells as the
    # uninterrupted run's log.
    assert [p.name for p in (killed / "csv").iterdir()] == ["version_0"]
    assert csv_cells(killed) == csv_cells(tmp_path / "straight")


def csv_cells(job_dir: Path) -> list[tuple[str, str, str]]:
    """Every (step, metric, value) of a job's CSV log, sorted; a repeated cell would show twice."""
    import csv

    with open(job_dir / "csv" / "version_0" / "metrics.csv", newline="") as file:
        cells = [(row["step"], key, value) for row in csv.DictReader(file) for key, value in row.items()
                 if value != "" and key != "step"]
    return sorted(cells)


def test_rerunning_a_finished_run_changes_nothing_and_a_changed_config_is_refused(tmp_path):
    job = tmp_path / "job"
    args = [*TINY, "trainer.max_epochs=1", f"hydra.run.dir={job}"]
    run(tmp_path, *args)
    before = {name: (job / name).read_bytes() for name in ("metrics.json", "job.json")}
    ckpt_time = (job / "checkpoints" / "last.ckpt").stat().st_mtime_ns

    again = run(tmp_path, *args)
    assert "not run again" in again.stdout + again.stderr
    assert {name: (job / name).read_bytes() for name in before} == before
    assert (job / "checkpoints" / "last.ckpt").stat().st_mtime_ns == ckpt_time

    refused = run(tmp_path, *args, "optimizer.lr=0.01", ok=False)
    assert refused.returncode != 0
    assert "optimizer.lr" in refused.stderr and "another configuration" in refused.stderr
    assert (job / "metrics.json").read_bytes() == before["metrics.json"]

    # Forced: trains again, and the first results are kept under previous/.
    run(tmp_path, *args, "optimizer.lr=0.01", "rerun=all")
    moved = list((job / "previous").glob("*/metrics.json"))
    assert len(moved) == 1 and moved[0].read_bytes() == before["metrics.json"]
    assert metrics(job)["status"] == "completed" and "optimizer.lr=0.01" in metrics(job)["overrides"]


def test_more_epochs_extend_a_finished_run_and_are_recorded(tmp_path):
    job = tmp_path / "job"
    # scheduler=none: a cosine schedule's length is its config (T_max), so it cannot be extended.
    base = [*TINY, "scheduler=none", f"hydra.run.dir={job}"]
    run(tmp_path, *base, "trainer.max_epochs=1")
    run(tmp_path, *base, "trainer.max_epochs=2")
    extended = metrics(job)
    assert extended["epochs"] == 2 and [row["epoch"] for row in extended["history"]] == [0, 1]
    assert extended["resumed_with_changes"] == {"trainer.max_epochs": [1, 2]}
    refused = run(tmp_path, *[*TINY, f"hydra.run.dir={job}", "trainer.max_epochs=3"], ok=False)
    assert "scheduler" in refused.stderr  # the cosine default differs from scheduler=none


def test_a_failed_extension_keeps_the_completed_result_and_is_retried(tmp_path):
    """A completed 2-epoch run asked for a 3rd epoch fails (a bad data.num_workers): its completed
    record stays, the failure is noted beside it, and the next run extends it from last.ckpt,
    ending as a straight 3-epoch run does."""
    job = tmp_path / "job"
    base = [*TINY, "scheduler=none", f"hydra.run.dir={job}"]
    run(tmp_path, *base, "trainer.max_epochs=2")
    completed = metrics(job)
    failed = run(tmp_path, *base, "trainer.max_epochs=3", "data.num_workers=-1", ok=False)
    assert failed.returncode != 0 and "num_workers" in failed.stderr
    kept = metrics(job)
    note = kept.pop("failed_extension")
    assert kept == completed  # status, best, final, history: untouched
    assert "num_workers" in note["error"] and "trainer.max_epochs=3" in note["overrides"]
    assert not (job / "previous").exists()  # nothing was moved aside
    run(tmp_path, *base, "trainer.max_epochs=3")
    extended = metrics(job)
    run(tmp_path, *TINY, "scheduler=none", "trainer.max_epochs=3", f"hydra.run.dir={tmp_path / 'straight'}")
    assert extended["status"] == "completed" and "failed_extension" not in extended
    same_run(extended, metrics(tmp_path / "straight"))


def test_a_killed_sweep_rerun_keeps_finished_jobs_resumes_and_runs_the_rest(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "trainer.max_epochs=3", "loss=bce_dice,dice", "optimizer.lr=0.003,0.001",
            f"hydra.sweep.dir={sweep}"]
    jobs = lambda: sorted(p for p in sweep.glob("[0-9]*_*") if p.is_dir())  # noqa: E731

    def two_done_third_checkpointed() -> bool:
        found = jobs()
        return (len(found) >= 3 and all(metrics(j).get("status") == "completed" for j in found[:2])
                and (found[2] / "checkpoints" / "last.ckpt").is_file())

    kill_when(tmp_path, args, two_done_third_checkpointed)
    kept = {j.name: (j / "metrics.json").read_bytes() for j in jobs()[:2]}
    partial = run(tmp_path, str(sweep), module="segsweep.reporting.cli")  # the killed job's pid is gone
    board_before = (sweep / "leaderboard.csv").read_text() if (sweep / "leaderboard.csv").is_file() else ""
    assert "interrupted" in board_before and "not started" in board_before, partial.stdout + partial.stderr

    run(tmp_path, *args)
    found = jobs()
    assert len(found) == 4 and all(metrics(j)["status"] == "completed" for j in found)
    assert {j.name: (j / "metrics.json").read_bytes() for j in found[:2]} == kept
    assert metrics(found[2])["attempts"] == 2 and [r["epoch"] for r in metrics(found[2])["history"]] == [0, 1, 2]
    board = (sweep / "leaderboard.csv").read_text()
    assert board.count("completed") == 4

    # A third run of the finished sweep: no job trains, every file and the leaderboard stay the same.
    all_metrics = {j.name: (j / "metrics.json").read_bytes() for j in found}
    run(tmp_path, *args)
    assert {j.name: (j / "metrics.json").read_bytes() for j in found} == all_metrics
    assert (sweep / "leaderboard.csv").read_text() == board


BAD_FILES = {
    "random bytes": lambda p: p.write_bytes(os.urandom(4096)),
    "text": lambda p: p.write_text("not a checkpoint\n"),
    "foreign torch file": lambda p: torch.save({"weights": torch.zeros(3)}, p),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run (job dir) to spoil copies of."""
    root = tmp_path_factory.mktemp("trained")
    run(root, *TINY, "trainer.max_epochs=2", f"hydra.run.dir={root / 'job'}")
    return root / "job"


def spoil(kind: str, path: Path, good: Path) -> None:
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    else:
        BAD_FILES[kind](path)


@pytest.mark.parametrize("kind", [*BAD_FILES, "truncated"])
def test_each_kind_of_bad_checkpoint_is_named_in_one_line(tmp_path, trained, kind):
    """What every entry point loads through (load_task: eval and predict; train's resume check)."""
    from segsweep.jobs.checkpoints import CheckpointError, read_checkpoint
    from segsweep.tasks import load_task

    bad = tmp_path / "bad.ckpt"
    spoil(kind, bad, trained / "checkpoints" / "last.ckpt")
    for load in (load_task, lambda path: read_checkpoint(path, head_only=True)):
        with pytest.raises(CheckpointError) as caught:
            load(str(bad))
        assert str(bad) in str(caught.value) and "\n" not in str(caught.value)


def test_every_entry_point_names_a_bad_checkpoint(tmp_path, trained, kind="truncated"):
    """The same error reaches the user of each command (one kind here; every kind above)."""
    from PIL import Image

    bad = tmp_path / "bad.ckpt"
    spoil(kind, bad, trained / "checkpoints" / "last.ckpt")
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 40)).save(tmp_path / "images" / "a.png")
    for module, args in (("segsweep.eval", [f"ckpt_path={bad}"]),
                         ("segsweep.predict", [f"ckpt_path={bad}", f"input={tmp_path / 'images'}",
                                               f"output={tmp_path / 'out'}"]),
                         ("segsweep.train", [*TINY, f"ckpt_path={bad}", f"hydra.run.dir={tmp_path / 'run'}"])):
        done = run(tmp_path, *args, f"hydra.run.dir={tmp_path / module}", module=module, ok=False)
        assert done.returncode != 0
        error = [line for line in done.stderr.splitlines() if "CheckpointError" in line or "checkpoint" in line]
        assert error and str(bad) in error[-1], (module, done.stderr[-2000:])


def test_a_broken_last_checkpoint_falls_back_then_names_the_file(tmp_path, trained):
    import shutil

    job = tmp_path / "job"
    shutil.copytree(trained, job)
    meta = metrics(job)
    meta["status"] = "running"  # as a killed job leaves it
    (job / "metrics.json").write_text(json.dumps(meta))
    last = job / "checkpoints" / "last.ckpt"
    spoil("truncated", last, trained / "checkpoints" / "last.ckpt")
    # The best checkpoint is readable: the job resumes from it, with a warning naming last.ckpt.
    done = run(tmp_path, *TINY, "trainer.max_epochs=2", f"hydra.run.dir={job}")
    assert "last.ckpt" in done.stdout + done.stderr and metrics(job)["status"] == "completed"

    for ckpt in (job / "checkpoints").glob("*.ckpt"):
        spoil("text", ckpt, ckpt)
    meta = metrics(job)
    meta["status"] = "running"
    (job / "metrics.json").write_text(json.dumps(meta))
    done = run(tmp_path, *TINY, "trainer.max_epochs=2", f"hydra.run.dir={job}", ok=False)
    assert done.returncode != 0 and "no readable checkpoint" in done.stderr and str(last) in done.stderr


def test_predict_refuses_to_write_over_its_inputs(tmp_path, trained):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 40)).save(images / "a.png")
    before = (images / "a.png").read_bytes()
    done = run(tmp_path, f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}", f"input={images}",
               f"output={images}", module="segsweep.predict", ok=False)
    assert done.returncode != 0 and "would overwrite input" in done.stderr and str(images / "a.png") in done.stderr
    assert (images / "a.png").read_bytes() == before
    assert [p.name for p in images.iterdir()] == ["a.png"]  # not even Hydra's .hydra/ or predict.log


def test_long_overrides_make_valid_wandb_tags():
    from segsweep.utils.loggers import WANDB_TAG_LIMIT, shorten_tag

    tag = "data.root=" + "/very/long/path" * 10 + "/isbi2012"
    short = shorten_tag(tag)
    assert len(short) == WANDB_TAG_LIMIT and short.startswith("data.root=/very") and short.endswith("/isbi2012")
    assert shorten_tag("model=unet") == "model=unet"


@pytest.mark.slow  # three 2-process DDP runs: ~50 s on 2 cores
def test_a_killed_ddp_job_resumes_identical_to_an_uninterrupted_one(tmp_path):
    """trainer=ddp_cpu: the job's own launcher and both ranks die with SIGKILL; the re-run resumes."""
    args = [*TINY, "trainer=ddp_cpu", "data.splits.train.num_images=9", "data.splits.val.num_images=5",
            "trainer.max_epochs=3", "test=false"]
    run(tmp_path, *args, f"hydra.run.dir={tmp_path / 'straight'}")
    killed = tmp_path / "killed"
    kill_when(tmp_path, [*args, f"hydra.run.dir={killed}"],
              lambda: epochs_done(killed) >= 1 and (killed / "checkpoints" / "last.ckpt").is_file())
    run(tmp_path, *args, f"hydra.run.dir={killed}")
    resumed = metrics(killed)
    assert resumed["status"] == "completed" and resumed["attempts"] == 2
    same_run(resumed, metrics(tmp_path / "straight"))


def finished_dir(make_cfg, status: str, *overrides: str):
    """A job dir as a finished run leaves it (record + metrics.json), without training."""
    from segsweep.jobs.plan import plan_job

    cfg = make_cfg(*overrides)
    assert plan_job(cfg).action == "start"  # writes job.json
    job = Path(cfg.paths.output_dir)
    (job / "metrics.json").write_text(json.dumps({"status": status, "best": {"val/iou": 0.5}, "epochs": 1}))
    return job


@pytest.mark.parametrize(("status", "rerun", "action"), [
    ("failed", "failed", "start"), ("failed", "none", "skip"), ("completed", "failed", "skip"),
    ("completed", "all", "start"), ("pruned", "failed", "skip"), ("running", "all", "start")])
def test_rerun_decides_which_finished_jobs_run_again(make_cfg, status, rerun, action):
    from segsweep.jobs.plan import plan_job

    job = finished_dir(make_cfg, status)
    before = (job / "metrics.json").read_bytes()
    plan = plan_job(make_cfg(f"rerun={rerun}"))
    assert plan.action == action
    if action == "skip":
        assert (job / "metrics.json").read_bytes() == before
    else:  # moved aside, not deleted
        assert [p.read_bytes() for p in job.glob("previous/*/metrics.json")] == [before]


def test_a_resumed_job_keeps_its_wandb_run_id(make_cfg):
    from segsweep.jobs.plan import plan_job
    from segsweep.utils.instantiate import instantiate_loggers

    cfg = make_cfg("logger=wandb")
    first = plan_job(cfg)
    job = Path(cfg.paths.output_dir)
    (job / "checkpoints").mkdir()
    (job / "metrics.json").write_text(json.dumps({"status": "running", "pid": 0}))  # killed
    ckpt = job / "checkpoints" / "last.ckpt"
    torch.save({"segsweep_task": "x", "state_dict": {}}, ckpt)
    again = plan_job(make_cfg("logger=wandb"))
    assert (again.action, again.run_id, again.resume_ckpt) == ("resume", first.run_id, str(ckpt))
    (logger,) = instantiate_loggers(cfg.logger, run_id=again.run_id)  # as train() builds them
    assert logger._wandb_init["id"] == first.run_id and logger._wandb_init["resume"] == "allow"
    # The overrides hold this long tmp path: W&B would refuse the tag (64 characters at most).
    assert max(len(o) for o in cfg.logger.wandb.tags) > 64
    assert max(len(tag) for tag in logger._wandb_init["tags"]) <= 64


def test_report_tells_running_from_interrupted(tmp_path):
    import socket

    from segsweep.reporting.jobs import load_job

    for name, pid in (("0_alive", os.getpid()), ("1_dead", 2**22 + 12345)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(
            {"status": "running", "host": socket.gethostname(), "pid": pid}))
    assert load_job(tmp_path / "0_alive").status == "running"
    assert load_job(tmp_path / "1_dead").status == "interrupted"
    assert load_job(tmp_path / "0_alive", finished=True).status == "interrupted"


def test_a_checkpoint_killed_mid_write_leaves_the_previous_one_whole(tmp_path, other_filesystem):
    """segsweep's checkpoint writer, with the run dir on one file system and TMPDIR on another
    (where fsspec's "atomic" transaction, Lightning's default, copies its temporary file over the
    target): SIGKILL a process rewriting a ~40 MB checkpoint in a loop, at random moments; the
    checkpoint is always a whole one, and no temporary file is left beside it but the one the kill
    cut short."""
    target = other_filesystem(200) / "checkpoints" / "last.ckpt"
    script = (
        "import sys, torch\n"
        "from segsweep.jobs.checkpoints import AtomicCheckpointIO\n"
        "io = AtomicCheckpointIO()\n"
        "for i in range(10**6):\n"
        "    io.save_checkpoint({'segsweep_task': 'x', 'i': i, 'w': torch.full((10**7,), float(i))}, sys.argv[1])\n"
        "    print(i, flush=True)\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    assert os.stat(tmp_path).st_dev != os.stat(target.parents[1]).st_dev
    from segsweep.jobs.checkpoints import read_checkpoint

    for delay in (0.3, 0.55, 0.8, 1.05, 1.3):
        process = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True,
                                   env=env)
        assert process.stdout.readline().strip()  # one whole checkpoint exists
        time.sleep(delay)  # the next writes are in progress now, most of the time
        process.kill()
        process.wait()
        saved = read_checkpoint(target)
        assert float(saved["w"][0]) == saved["i"] and float(saved["w"][-1]) == saved["i"]
        assert len(list(target.parent.glob(".last.ckpt.*.tmp"))) <= 1
        for leftover in target.parent.glob(".last.ckpt.*.tmp"):
            leftover.unlink()


def test_training_writes_checkpoints_through_the_atomic_writer(make_cfg):
    from segsweep.callbacks import RunSummary
    from segsweep.jobs.checkpoints import AtomicCheckpointIO
    from segsweep.train import build_trainer

    trainer = build_trainer(make_cfg("callbacks=default", "~callbacks.progress_bar", "trainer=ddp_cpu"), RunSummary())
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_full_disk_fails_in_one_line_naming_the_file_and_leaves_no_temp_file(tmp_path, other_filesystem):
    """The run dir on a 2 MB file system: checkpoints do not fit. The error is one line naming the
    file and the free space, no temporary file stays, and the job is recorded as failed."""
    job = other_filesystem(2) / "job"
    done = run(tmp_path, *TINY, "trainer.max_epochs=2", f"hydra.run.dir={job}", ok=False)
    assert done.returncode == 1
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "no space left" in line]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert str(job) in errors[0] and "free there" in errors[0]
    assert not [p for p in job.rglob("*") if p.name.endswith(".tmp")]
    record = metrics(job)
    assert record["status"] == "failed" and "no space left" in record["error"]


def test_history_rows_hold_their_own_epochs_training_loss(make_cfg, monkeypatch):
    """Lightning aggregates train/* logs after the epoch's checkpoint: the history must not carry
    the previous epoch's values. Expected: the mean of the per-batch losses, collected apart."""
    import lightning as L

    import segsweep.train as training

    seen: dict[int, list[tuple[float, int]]] = {}

    class Collect(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.setdefault(trainer.current_epoch, []).append((float(outputs["loss"]), len(batch["image"])))

    build = training.build_trainer
    monkeypatch.setattr(
        training, "build_trainer", lambda cfg, summary, **kw: _with(build(cfg, summary, **kw), Collect())
    )
    result = training.train(make_cfg("trainer.max_epochs=2", "data.batch_size=3", "model.base_width=8"))
    for row in result["history"]:
        losses = seen[row["epoch"]]
        expected = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
        assert row["train/loss"] == pytest.approx(expected, rel=1e-6)
        assert {"train/loss/bce", "train/loss/dice"} <= set(row)


def _with(trainer, callback):
    trainer.callbacks.append(callback)
    return trainer


def test_a_new_job_dir_keeps_hydras_own_files(make_cfg):
    """Hydra writes .hydra/ and the job's log before the job starts: a first start moves nothing."""
    from segsweep.jobs.plan import plan_job

    cfg = make_cfg()
    job = Path(cfg.paths.output_dir)
    (job / ".hydra").mkdir(parents=True)
    (job / "train.log").write_text("[hydra] starting\n")
    assert plan_job(cfg).action == "start"
    assert (job / "train.log").is_file() and not (job / "previous").exists()


def test_last_checkpoint_is_each_epochs_end_even_when_the_metric_stops_improving(make_cfg, tmp_path):
    # lr 0 and no BatchNorm: the weights never change, so val/iou never improves after epoch 0.
    # Lightning's own save_last writes last.ckpt only when the best checkpoint is rewritten: a run
    # killed in epoch 3 would resume from epoch 0 and train epochs 1 and 2 again.
    from segsweep.train import train
    train(make_cfg("callbacks=default", "~callbacks.progress_bar", "~callbacks.image_logger", "optimizer.lr=0",
                   "scheduler=none", "model.batch_norm=false", "trainer.max_epochs=3"))
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch000.ckpt", "last.ckpt"]
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 6)  # 3 epochs of 2 batches
    assert json.loads((tmp_path / "metrics.json").read_text())["best_checkpoint"].endswith("epoch000.ckpt")
