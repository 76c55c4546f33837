"""DDP on CPU (gloo): training, exact evaluation metrics, and DDP jobs inside a Hydra multirun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY_ENCODER, compose_config
from omegaconf import DictConfig, OmegaConf, open_dict

from segsweep.data import SyntheticShapes
from segsweep.data.base import RawSample
from segsweep.eval import evaluate
from segsweep.jobs.ddp import launch_ranks, local_process_count
from segsweep.jobs.plan import JobPlan
from segsweep.jobs.run import write_metrics
from segsweep.train import build_datamodule, build_task

TESTS = str(Path(__file__).resolve().parent)

# Five test images in batches of two: the ranks get 3 and 2, so any padding would count twice.
TINY = ["trainer.max_epochs=1", f"encoder={TINY_ENCODER}", "data.dataset.image_size=64",
        "data.splits.train.num_images=8", "data.splits.val.num_images=5", "data.splits.test.num_images=5",
        "data.batch_size=2", "data.eval_batch_size=2", "augment.crop_size=64", "logger=csv",
        "callbacks.image_logger.every_n_epochs=1"]


def run(*args, cwd, expect_code=0):
    # The ranks import this module for the test datasets below.
    path = os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == expect_code, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_process_count_from_trainer_config():
    assert local_process_count(OmegaConf.create({"strategy": "ddp", "devices": 2})) == 2
    assert local_process_count(OmegaConf.create({"strategy": "auto", "devices": 4})) == 1
    assert local_process_count(OmegaConf.create({"strategy": "ddp_spawn", "devices": 2})) == 1
    with pytest.raises(ValueError, match="trainer.devices='auto'"):
        local_process_count(OmegaConf.create({"strategy": "ddp", "devices": "auto", "accelerator": "cpu"}))


def test_ddp_multirun_jobs_are_single_exact_and_repeatable(tmp_path, make_cfg):
    """Two identical DDP jobs in one multirun: two job dirs, equal metrics, and the DDP test
    metrics equal a single-process evaluation of the same checkpoint."""
    sweep = tmp_path / "sweep"
    run("segsweep.train", "-m", "trainer=ddp_cpu", *TINY, "seed=3,3", f"hydra.sweep.dir={sweep}", cwd=tmp_path)

    jobs = sorted(p for p in sweep.iterdir() if (p / "metrics.json").exists())
    assert [p.name for p in jobs] == [f"{i}_classic_unet-bce_dice" for i in (0, 1)]
    assert len([p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]) == 2
    first, second = (json.loads((job / "metrics.json").read_text()) for job in jobs)
    assert first["status"] == "completed" and first["final"] == second["final"]
    # seed=3,3: two replicas of one set-up (leaderboard.csv ranks set-ups, the jobs file every job)
    assert (sweep / "leaderboard_jobs.csv").read_text().count("completed") == 2
    assert not (jobs[0] / "wandb").exists()  # csv logger only; one csv dir, written by rank zero
    assert len(list((jobs[0] / "csv").iterdir())) == 1

    cfg = make_cfg("trainer=cpu", f"ckpt_path={first['best_checkpoint']}", "split=test",
                   config_name="eval", fast=False)
    single = evaluate(cfg)
    for name in ("test/iou", "test/dice", "test/acc"):
        assert single["final"][name] == first["final"][name], name  # integer counts: exact


@pytest.mark.slow  # ~30 s; the default run covers Optuna + DDP in tests/test_launcher.py
def test_optuna_trials_under_ddp_share_their_sampled_parameters(tmp_path):
    """Each Optuna trial is one DDP job: both ranks run the parameters the sweeper sampled once,
    and the sweeper gets rank zero's metric (the study's best value is the best job's val/iou)."""
    sweep = tmp_path / "sweep"
    run("segsweep.train", "-m", "trainer=ddp_cpu", *TINY, "hparams_search=optuna", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.params.loss='choice(dice)'", "hydra.sweeper.params.model='choice(unet)'",
        f"hydra.sweeper.params.encoder='choice({TINY_ENCODER})'",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path)

    jobs = sorted(p for p in sweep.iterdir() if (p / "metrics.json").exists())
    assert len(jobs) == 2 and len([p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]) == 2
    learning_rates = []
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["status"] == "completed"
        sampled = next(o for o in metrics["overrides"] if o.startswith("optimizer.lr="))
        # The ranks read this one file: the config the sweeper sampled for this trial.
        rank_config = OmegaConf.load(job / "ddp" / "config.yaml")
        assert rank_config.optimizer.lr == pytest.approx(float(sampled.split("=", 1)[1]))
        learning_rates.append(rank_config.optimizer.lr)
    assert learning_rates[0] != learning_rates[1]
    best = OmegaConf.load(sweep / "optimization_results.yaml").best_value
    assert best == pytest.approx(max(json.loads((j / "metrics.json").read_text())["best"]["val/iou"] for j in jobs))
    assert (sweep / "leaderboard.csv").read_text().count("completed") == 2


def test_slurm_launcher_config_composes(tmp_path):
    from conftest import CONFIG_DIR
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=slurm", "hydra.launcher.nodes=2",
                                          "hydra.launcher.gpus_per_node=4", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.tasks_per_node == 4 and launcher.nodes == 2 and launcher.max_num_timeout > 0
    assert cfg.trainer.devices == 4 and cfg.trainer.num_nodes == 2 and cfg.trainer.strategy == "ddp"
    GlobalHydra.instance().clear()


@pytest.mark.slow  # ~20 s of submitit start-up
def test_submitit_local_executor_runs_a_job(tmp_path):
    sweep = tmp_path / "sweep"
    run("segsweep.train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
        "trainer=cpu", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    (job,) = [p for p in sweep.iterdir() if (p / "metrics.json").exists()]
    assert json.loads((job / "metrics.json").read_text())["status"] == "completed"


def test_eval_loaders_shard_without_repeats_under_ddp():
    """Each of 5 images is evaluated by exactly one of 2 ranks (Lightning's default pads to 6)."""
    import functools

    from test_data import cpu_trainer

    from segsweep.data import SegmentationDataModule

    seen = []
    for rank in (0, 1):
        dm = SegmentationDataModule(dataset=functools.partial(SyntheticShapes, image_size=32),
                                    splits={"train": {"num_images": 4}, "val": {"num_images": 5}})
        dm.trainer = cpu_trainer(2, rank)
        seen += [name for batch in dm.val_dataloader() for name in batch["name"]]
    assert sorted(seen) == [f"synthetic_0_{i:05d}" for i in range(5)]


class MixedSizeShapes(SyntheticShapes):
    """Synthetic shapes cut to a size that depends on the index: an eval set of mixed sizes."""

    SIZES = ((64, 64), (40, 56), (64, 64), (48, 40), (40, 56))

    def load(self, index: int) -> RawSample:
        sample = super().load(index)
        height, width = self.SIZES[index % len(self.SIZES)]
        cut = [None if a is None else a[:height, :width] for a in (sample.image, sample.mask, sample.instances)]
        return RawSample(cut[0], cut[1], sample.name, cut[2])


class FailingShapes(SyntheticShapes):
    """Rank 1 raises on its ``fail_after + 1``-th training sample, mid-epoch; rank 0 goes on."""

    def __init__(self, *args, fail_after: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fail_after, self.loaded = fail_after, 0

    def load(self, index: int) -> RawSample:
        self.loaded += 1
        if self.fail_after is not None and os.environ.get("RANK") == "1" and self.loaded > self.fail_after:
            raise ValueError(f"sample {index} of rank 1 is unreadable (a test failure)")
        return super().load(index)


# Five mixed-size validation images: batches of 3 hold 2 sizes, 2 ranks hold 3 and 2 images.
MIXED = ["data.dataset._target_=test_distributed.MixedSizeShapes", "data.splits.val.num_images=5",
         "augment.crop_size=32", "model.base_width=8", "trainer.max_epochs=25"]


def validate(case: DictConfig, weights: str, eval_batch_size: int, devices: int) -> dict[str, float]:
    """Every metric (losses and timings aside) of one validation of saved weights."""
    with open_dict(case):
        case.data.eval_batch_size = eval_batch_size
    datamodule = build_datamodule(case)
    task = build_task(case, datamodule)
    task.load_state_dict(torch.load(weights))
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(task, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if "loss" not in k and "time" not in k}


def validate_cases(cfg: DictConfig, plan) -> dict:
    """A DDP job (``segsweep.jobs.ddp`` runs it on each rank): validate every saved case."""
    final = {name: validate(OmegaConf.load(case.config), case.weights, 3, devices=2)
             for name, case in cfg.cases.items()}
    result = {"status": "completed", "final": final}
    write_metrics(cfg.paths.output_dir, result)
    return result


def test_metrics_do_not_depend_on_batching_sizes_or_ranks(tmp_path, monkeypatch):
    """Binary, semantic and instance metrics on 5 mixed-size images: equal, to the last bit, with
    eval_batch_size 1 or 3 and under DDP on 2 ranks (3 + 2 images: uneven shards)."""
    cases, single = {}, {}
    for name in ("binary", "semantic", "instance"):
        cfg = compose_config(tmp_path / name, *MIXED, f"task={name}")
        case = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        L.seed_everything(0)
        datamodule = build_datamodule(case)
        task = build_task(case, datamodule)
        L.Trainer(**{k: v for k, v in case.trainer.items() if k != "_target_"}, logger=False,
                  enable_checkpointing=False).fit(task, datamodule=datamodule)
        cases[name] = {"config": str(tmp_path / f"{name}.yaml"), "weights": str(tmp_path / f"{name}.pt")}
        OmegaConf.save(case, cases[name]["config"])
        torch.save(task.state_dict(), cases[name]["weights"])
        single[name] = validate(case, cases[name]["weights"], 1, devices=1)
        print(name, single[name])
        assert same(validate(case, cases[name]["weights"], 3, devices=1), single[name]), name
    # Trained enough that the values say something: not all 0 or undefined.
    assert 0 < single["binary"]["val/iou"] < 1 and 0 < single["semantic"]["val/iou"] < 1
    assert 0 < single["instance"]["val/aji"] < 1 and single["instance"]["val/f1"] > 0

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
    job = OmegaConf.create({"trainer": {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}, "cases": cases,
                            "paths": {"output_dir": str(tmp_path / "ddp_job")}, "run_name": "ddp"})
    ddp = launch_ranks(job, "test_distributed:validate_cases", JobPlan("start"))["final"]
    assert all(same(ddp[name], single[name]) for name in single), (ddp, single)


def same(a: dict[str, float | None], b: dict[str, float | None]) -> bool:
    """Equal, NaN (null in JSON) equal to itself."""
    def plain(d):
        return {k: None if v is None or v != v else v for k, v in d.items()}
    return plain(a) == plain(b)


def test_a_failing_rank_ends_the_job_with_its_own_error(tmp_path):
    """Rank 1 raises mid-epoch while rank 0 would wait for it: the job ends within a bounded time and
    metrics.json holds rank 1's error and traceback, not the launcher's."""
    started = time.monotonic()
    tiny = [arg for arg in TINY if not arg.startswith(("logger", "callbacks"))]
    run("segsweep.train", "trainer=ddp_cpu", *tiny, "logger=none", "callbacks=none",
        "data.dataset._target_=test_distributed.FailingShapes", "+data.splits.train.fail_after=3",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, expect_code=1)
    assert time.monotonic() - started < 180
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed"
    assert metrics["error"].startswith("rank 1: ValueError: sample") and "unreadable" in metrics["error"]
    assert "test_distributed.py" in metrics["traceback"] and "in load" in metrics["traceback"]
    rank_error = json.loads((tmp_path / "run" / "ddp" / "rank1.error.json").read_text())
    assert rank_error["rank"] == 1 and "unreadable" in rank_error["traceback"]


def test_the_other_ranks_are_stopped_when_one_fails():
    """A rank left waiting for a failed peer (here: sleeping) is killed after the grace period."""
    from segsweep.jobs.ddp import wait_for_ranks

    started = time.monotonic()
    ranks = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]),
             subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])]
    codes = wait_for_ranks(ranks, grace_s=1.0)
    assert codes[1] == 1 and codes[0] != 0  # killed, not finished
    assert time.monotonic() - started < 20
