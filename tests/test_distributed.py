"""DDP on CPU (gloo): training, exact evaluation metrics, and DDP jobs inside a Hydra multirun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import TINY_ENCODER
from omegaconf import OmegaConf

from segsweep.eval import evaluate
from segsweep.launch import local_process_count

# Five test images in batches of two: the ranks get 3 and 2, so any padding would count twice.
TINY = ["trainer.max_epochs=1", f"encoder={TINY_ENCODER}", "data.dataset.image_size=64",
        "data.splits.train.num_images=8", "data.splits.val.num_images=5", "data.splits.test.num_images=5",
        "data.batch_size=2", "data.eval_batch_size=2", "augment.crop_size=64", "logger=csv",
        "callbacks.image_logger.every_n_epochs=1"]


def run(*args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
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
    assert (sweep / "leaderboard.csv").read_text().count("completed") == 2
    assert not (jobs[0] / "wandb").exists()  # csv logger only; one csv dir, written by rank zero
    assert len(list((jobs[0] / "csv").iterdir())) == 1

    cfg = make_cfg("trainer=cpu", f"ckpt_path={first['best_checkpoint']}", "split=test",
                   config_name="eval", fast=False)
    single = evaluate(cfg)
    for name in ("test/iou", "test/dice", "test/acc"):
        assert single["final"][name] == pytest.approx(first["final"][name], abs=1e-6), name


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


def test_submitit_local_executor_runs_a_job(tmp_path):
    sweep = tmp_path / "sweep"
    run("segsweep.train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
        "trainer=cpu", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    (job,) = [p for p in sweep.iterdir() if (p / "metrics.json").exists()]
    assert json.loads((job / "metrics.json").read_text())["status"] == "completed"


def test_eval_loaders_shard_without_repeats_under_ddp():
    """Each of 5 images is evaluated by exactly one of 2 ranks (Lightning's default pads to 6)."""
    import functools
    from types import SimpleNamespace

    from segsweep.data import SegmentationDataModule, SyntheticShapes

    seen = []
    for rank in (0, 1):
        dm = SegmentationDataModule(dataset=functools.partial(SyntheticShapes, image_size=32),
                                    splits={"train": {"num_images": 4}, "val": {"num_images": 5}})
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        seen += list(dm.val_dataloader().sampler)
    assert sorted(seen) == [0, 1, 2, 3, 4]
