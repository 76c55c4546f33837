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
    sweep, records, _ = sweep_app(tmp_path, "hydra.launcher.devices=[3,5]", "+x=10,1,1", "+sleep=0.4")
    assert sorted(records) == [0, 1, 2]
    assert len({r["pid"] for r in records.values()} | {os.getpid()}) == 4  # each job its own process
    assert all((sweep / ".gpu_launcher" / f"{num}.log").is_file() for num in records)  # console output
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


def test_parallel_optuna_trials_run_as_ddp_jobs_on_two_gpu_slots_each(tmp_path):
    """segsweep-train under hparams_search=optuna with n_jobs=2: both trials run at once, each a
    ddp_cpu job whose two ranks see the same two of the four listed ids; the study gets each
    trial's value (its best equals the leaderboard's best)."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([
        sys.executable, "-m", "segsweep.train", "-m", "hydra/launcher=gpus", "hydra.launcher.devices=[0,1,2,3]",
        "hydra.launcher.gpus_per_job=2", "trainer=ddp_cpu", "trainer.max_epochs=1", f"encoder={TINY_ENCODER}",
        "data.dataset.image_size=64", "data.splits.train.num_images=4", "data.splits.val.num_images=2",
        "data.splits.test.num_images=2", "data.batch_size=2", "augment.crop_size=64", "logger=none", "callbacks=none",
        "+callbacks.probe._target_=launcher_probe.RecordDevices", f"+callbacks.probe.barrier={tmp_path / 'barrier'}",
        "+callbacks.probe.jobs=2", "+trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false", "test=false", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2", "hydra.sweeper.params.loss='choice(dice)'",
        "hydra.sweeper.params.model='choice(unet)'", f"hydra.sweeper.params.encoder='choice({TINY_ENCODER})'",
        f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    jobs = sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file())
    assert len(jobs) == 2
    ranks = [[json.loads((job / f"devices_rank{r}.json").read_text()) for r in (0, 1)] for job in jobs]
    for job_ranks in ranks:
        assert job_ranks[0]["gpus"] == job_ranks[1]["gpus"] and len(job_ranks[0]["gpus"].split(",")) == 2
    assert {ranks[0][0]["gpus"], ranks[1][0]["gpus"]} == {"0,1", "2,3"}
    # Both trials trained at the same time: each rank waited at its start for the other trial's
    # (launcher_probe's barrier); one that waited in vain would have failed with a TimeoutError.
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"]
    jobs_csv = sweep / "leaderboard_jobs.csv"  # written beside leaderboard.csv when jobs are replicas
    board = pd.read_csv(jobs_csv if jobs_csv.is_file() else sweep / "leaderboard.csv")
    assert (board["status"] == "completed").all() and best == pytest.approx(board["best val/iou"].max())


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


# -- fast jobs on each GPU: trainer=gpu, the SpeedUps callback, the loaders of GPU runs ------------

def test_gpu_trainers_compose_with_bf16_and_the_speed_callback(make_cfg):
    for trainer in ("gpu", "ddp"):
        for callbacks in ("default", "none"):  # the speed entry comes with the trainer, not the callbacks
            cfg = make_cfg(f"trainer={trainer}", f"callbacks={callbacks}")
            assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
            speed = cfg.callbacks.speed
            assert speed._target_ == "segsweep.callbacks.speed.SpeedUps"
            assert speed.channels_last and speed.cudnn_benchmark and not speed.compile
    assert "speed" not in (make_cfg("trainer=cpu", "callbacks=default").callbacks or {})


def test_speed_callback_makes_the_net_channels_last_and_compiles_it_in_place(make_cfg, monkeypatch):
    import torch
    from hydra.utils import instantiate

    from segsweep.train import build_datamodule, build_task

    cfg = make_cfg("model.base_width=4", "model.depth=2")
    task = build_task(cfg, build_datamodule(cfg))
    images = torch.randn(2, 3, 32, 32)
    task.eval()
    with torch.no_grad():
        expected = task(images)
    keys = list(task.state_dict())
    speed = instantiate(make_cfg("trainer=gpu", "+callbacks.speed.compile_options.mode=max-autotune",
                                 "callbacks.speed.compile=true").callbacks.speed)
    speed.compile = False  # first channels-last alone: the same outputs
    speed.setup(None, task, "fit")
    weights = [p for p in task.net.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    with torch.no_grad():
        assert torch.allclose(task(images), expected, atol=1e-5)
    # Then compiled, with torch.compile replaced by a recorder: importing the compiler alone costs
    # ~8 s on these cores. The real compile runs in scripts/gpu_check.py's "+compile" parts (Inductor
    # on a GPU; on CPU, in tests/test_gpu_check.py's dry run, Dynamo with the eager backend).
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **options: compiled.append(options) or fn)
    speed.compile = True
    speed.setup(None, task, "fit")
    speed.setup(None, task, "test")  # once per net, whichever stage comes first
    assert compiled == [{"mode": "max-autotune"}]
    assert task.net._compiled_call_impl is not None  # nn.Module.compile: __call__ goes through torch.compile
    assert list(task.state_dict()) == keys  # checkpoints keep their keys


def test_cudnn_benchmark_is_on_for_training_crops_only():
    import torch

    from segsweep.callbacks.speed import SpeedUps

    speed, before = SpeedUps(), torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        states = []
        for hook in ("on_train_start", "on_validation_start", "on_validation_end", "on_train_end",
                     "on_test_start", "on_test_end"):
            getattr(speed, hook)(None, None)
            states.append(torch.backends.cudnn.benchmark)
        assert states == [True, False, True, False, False, False]
    finally:
        torch.backends.cudnn.benchmark = before


def test_loaders_of_gpu_runs_pin_memory_and_use_the_cpus(make_cfg):
    from types import SimpleNamespace

    import torch

    from segsweep.data.datamodule import MAX_GPU_WORKERS
    from segsweep.train import build_datamodule

    datamodule = build_datamodule(make_cfg())  # FAST: no workers, no pinning
    datamodule.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")), num_devices=1,
                                         world_size=1, global_rank=0, current_epoch=0)
    loader = datamodule.train_dataloader()
    assert (loader.num_workers, loader.pin_memory) == (0, False)
    for ranks in (1, 2):
        datamodule.trainer.strategy.root_device, datamodule.trainer.num_devices = torch.device("cuda", 0), ranks
        cpus_per_rank = len(os.sched_getaffinity(0)) // ranks
        for loader in (datamodule.train_dataloader(), datamodule.val_dataloader()):
            assert loader.pin_memory and loader.num_workers == max(0, min(cpus_per_rank - 1, MAX_GPU_WORKERS))


def test_ctrl_c_leaves_running_jobs_resumable_as_the_basic_launcher_does(tmp_path):
    """SIGINT to the whole process group (a terminal's Ctrl-C) while two jobs train on two slots:
    the sweep ends with code 130 and no traceback, both jobs stay resumable ('running' records of
    dead processes: interrupted), and the same command resumes each from its last checkpoint."""
    import signal
    import time

    sweep = tmp_path / "sweep"
    args = [sys.executable, "-m", "segsweep.train", "-m", "hydra/launcher=gpus", "hydra.launcher.devices=[0,1]",
            "trainer=cpu", "trainer.max_epochs=6", "scheduler=none", "data.dataset.image_size=64",
            "data.splits.train.num_images=48", "data.splits.val.num_images=4", "data.splits.test.num_images=4",
            "data.batch_size=4", "augment.crop_size=48", "model.base_width=8", "model.depth=3", "loss=dice,bce_dice",
            "logger=none", "callbacks=default", "~callbacks.progress_bar", "~callbacks.image_logger",
            "+trainer.enable_model_summary=false", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # As from a terminal: SIGINT handled (pytest-xdist workers ignore it, and children inherit that).
    process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def history(job):
        try:
            return json.loads((job / "metrics.json").read_text()).get("history") or []
        except (OSError, ValueError):
            return []

    deadline = time.time() + 300
    while True:
        jobs = sorted(p for p in sweep.glob("[01]_*") if p.is_dir())
        if len(jobs) == 2 and all(history(j) and (j / "checkpoints" / "last.ckpt").is_file() for j in jobs):
            break
        assert process.poll() is None, "the sweep ended before it could be interrupted"
        assert time.time() < deadline, "timed out waiting for both jobs to checkpoint"
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, out[-2000:] + err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    records = [json.loads((job / "metrics.json").read_text()) for job in jobs]
    assert [r["status"] for r in records] == ["running", "running"]
    assert all(len(r["history"]) < 6 for r in records)
    from segsweep.reporting.jobs import load_job

    assert [load_job(job).status for job in jobs] == ["interrupted", "interrupted"]

    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for job in jobs:
        resumed = json.loads((job / "metrics.json").read_text())
        assert resumed["status"] == "completed" and resumed["attempts"] == 2
        assert [row["epoch"] for row in resumed["history"]] == list(range(6))
        assert not (job / "previous").exists()  # resumed in place, nothing started over
