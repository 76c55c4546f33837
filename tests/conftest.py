"""Fixtures: configs composed with Hydra into tmp_path, forced to CPU, tiny data, no logger."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from segsweep.resolvers import register as register_resolvers

# One torch thread per process: the suite runs subprocesses (CLIs, DDP ranks) beside pytest on
# 2 cores, and oversubscribed threads slowed small convolutions by 10x or more.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
register_resolvers()  # as the entry points do: the configs use ${join_name:} and ${sweep_group:}

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(ROOT / "conf")
DATASETS = Path(os.environ.get("SEGSWEEP_DATASETS", ROOT.parent / "shared" / "datasets"))
TINY_ENCODER = "tu-mobilenetv3_small_050"

# Small enough that a fit + test takes a few seconds on 2 CPU cores.
FAST = [
    "trainer=cpu",
    "trainer.max_epochs=1",
    "logger=none",
    "callbacks=none",
    "data.dataset.image_size=64",
    "data.splits.train.num_images=8",
    "data.splits.val.num_images=4",
    "data.splits.test.num_images=4",
    "data.batch_size=4",
    "augment.crop_size=64",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
]


def compose_config(output_dir: Path, *overrides: str, config_name: str = "train", fast: bool = True):
    """Compose a config as the app would, with ``${hydra:...}`` interpolations resolvable."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(
            config_name,
            overrides=[*(FAST if fast else []), f"paths.output_dir={output_dir}", *overrides],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):  # the app's own cfg has no hydra node; ${hydra:...} reads HydraConfig
        del cfg.hydra
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    def _make(*overrides: str, **kwargs):
        return compose_config(tmp_path, *overrides, **kwargs)

    yield _make
    GlobalHydra.instance().clear()


def untrained_checkpoint(cfg, path: Path) -> str:
    """A checkpoint as segsweep-train writes it, of the untrained task ``cfg`` builds: predicting
    and evaluating need no good weights, and a fit per task kind would cost seconds each."""
    import lightning as L

    from segsweep.train import build_datamodule, build_task

    task = build_task(cfg, build_datamodule(cfg))
    checkpoint = {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                  "pytorch-lightning_version": L.__version__}
    task.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return str(path)


def requires_dataset(name: str):
    """Skip, saying why, when a real dataset of ../shared/datasets is absent."""
    path = DATASETS / name
    return pytest.mark.skipif(
        not path.is_dir(), reason=f"real dataset {path} not found (set SEGSWEEP_DATASETS to its parent)"
    )


@pytest.fixture
def other_filesystem(tmp_path):
    """``mount(size_mb)``: a tmpfs of that size under ``tmp_path`` (root only), another file system
    than the rest of ``tmp_path``, and a small one that fills up; unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (another, small file system)")
    mounted = []

    def mount(size_mb: int) -> Path:
        folder = tmp_path / f"tmpfs{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)
