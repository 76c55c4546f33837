"""Real-data checks (``make test-slow``): short CPU trainings on ../shared/datasets must reach
asserted floors. Each takes 2-3 minutes on 2 idle CPU cores (11-13 minutes on the loaded
machine they were last run on, 2026-11-27); the floors sit below what the same
command measured (docs/benchmarks.md), so they catch a broken pipeline, not noise."""

from __future__ import annotations

import pytest
from conftest import compose_config, requires_dataset

from segsweep.train import train

pytestmark = pytest.mark.slow
# experiment=isbi2012 configures the overlay callback: it keeps the default callbacks.
QUIET = ["logger=none", "test=false"]


@requires_dataset("isbi2012")
def test_isbi2012_membrane_dice(tmp_path):
    """Classic U-Net (width 16) on 18 ISBI slices, 256 px crops, 12 epochs: membrane Dice on the 6
    whole validation slices (measured 0.755; 0.790 after 30 epochs in docs/benchmarks.md)."""
    cfg = compose_config(tmp_path, "experiment=isbi2012", *QUIET, "trainer=cpu", "trainer.max_epochs=12",
                         "data.num_workers=0", fast=False)
    result = train(cfg)
    assert result["status"] == "completed"
    assert result["best"]["val/dice"] >= 0.70


@requires_dataset("dsb2018_nuclei_sample")
def test_dsb2018_nuclei_ap50(tmp_path):
    """Bottom-up U-Net (ResNet-18 encoder, random init) on three quadrants of the DSB sample, 12
    epochs: mask AP50 on the fourth (measured 0.891; 0.958 at epoch 13 of 30 in docs/benchmarks.md)."""
    cfg = compose_config(tmp_path, "experiment=instance_dsb2018", *QUIET, "callbacks=none",
                         "+trainer.enable_progress_bar=false", "trainer=cpu", "trainer.max_epochs=12", fast=False)
    result = train(cfg)
    assert result["status"] == "completed"
    assert result["best"]["val/ap50"] >= 0.80
