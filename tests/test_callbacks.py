"""segsweep's always-on callbacks check and measure only on logging steps, not on every step."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from segsweep.callbacks import RunSummary
from segsweep.callbacks import run_summary as run_summary_module
from segsweep.callbacks.divergence import DivergedError, DivergenceStop


class ScriptedLoss(L.LightningModule):
    """Its loss at step k is ``losses[k]`` (plus 0 * a weight, so there is a gradient); keeps the
    epoch's running loss sum like segsweep's tasks (``train_loss_sums``) unless ``sums=False``."""

    def __init__(self, losses: dict[int, float], sums: bool = True):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.losses, self.step_losses = losses, []
        if sums:
            self.train_loss_sums = lambda: ({"train/loss": self._sum}, 1)

    def on_train_epoch_start(self):
        self._sum = torch.zeros(())

    def training_step(self, batch, batch_idx):
        loss = self.weight.sum() * 0 + self.losses.get(self.global_step, 1.0)
        self._sum = self._sum + loss.detach()
        return {"loss": loss}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(module, callbacks, batches: int, epochs: int = 1, log_every_n_steps: int = 4):
    data = DataLoader([{"image": torch.zeros(1, 4, 4)}] * batches, batch_size=1)  # segsweep's batch dicts
    trainer = L.Trainer(max_epochs=epochs, log_every_n_steps=log_every_n_steps, callbacks=callbacks, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", limit_val_batches=0)
    trainer.fit(module, data)
    return trainer


class CountingStop(DivergenceStop):
    def __init__(self):
        self.checked_at: list[int] = []

    def check(self, trainer, pl_module, outputs):
        self.checked_at.append(trainer.global_step)
        super().check(trainer, pl_module, outputs)


def test_a_nan_loss_stops_the_run_at_the_next_logging_step_with_the_reason():
    stop = CountingStop()
    with pytest.raises(DivergedError, match=r"^diverged at epoch 0 \(step 4\): training loss is nan$"):
        fit(ScriptedLoss({2: float("nan")}), [stop], batches=20)
    assert stop.checked_at == [4]  # after steps 1-4; steps 1-3 were not checked


def test_an_infinite_loss_in_an_epochs_last_steps_is_caught_at_the_epochs_end():
    stop = CountingStop()
    with pytest.raises(DivergedError, match=r"^diverged at epoch 0 \(step 6\): training loss is inf$"):
        fit(ScriptedLoss({5: float("inf")}), [stop], batches=6, epochs=3)
    assert stop.checked_at == [4, 6]  # step 4 (finite), then the epoch's end


def test_finite_runs_are_checked_only_on_logging_steps_and_epoch_ends():
    stop = CountingStop()
    fit(ScriptedLoss({}), [stop], batches=10, epochs=2, log_every_n_steps=5)
    assert stop.checked_at == [5, 10, 10, 15, 20, 20]


def test_a_module_without_loss_sums_has_its_own_step_loss_checked():
    with pytest.raises(DivergedError, match=r"\(step 4\): training loss is nan"):
        fit(ScriptedLoss({3: float("nan")}, sums=False), [DivergenceStop()], batches=20)


def test_peak_memory_is_measured_on_logging_steps_only(monkeypatch):
    resets = []
    real_reset = run_summary_module.reset_peak_memory
    monkeypatch.setattr(run_summary_module, "reset_peak_memory",
                        lambda device: resets.append(device) or real_reset(device))
    summary = RunSummary()
    fit(ScriptedLoss({}), [summary], batches=12, log_every_n_steps=5)
    assert len(resets) == 3  # steps 0, 5 and 10 of the epoch
    assert summary.peak_memory_mb > 0 and summary.peak_step_growth_mb >= 0
    assert summary.train_images == 12  # counted on every step
