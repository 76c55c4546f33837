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


def test_peak_memory_is_measured_on_the_first_and_logging_steps_only(monkeypatch):
    resets = []
    real_reset = run_summary_module.reset_peak_memory
    monkeypatch.setattr(run_summary_module, "reset_peak_memory",
                        lambda device: resets.append(device) or real_reset(device))
    summary = RunSummary()
    fit(ScriptedLoss({}), [summary], batches=12, log_every_n_steps=5)
    assert len(resets) == 3  # steps 0 (the run's first), 4 and 9 (the logging steps)
    assert summary.peak_memory_mb > 0 and summary.peak_step_growth_mb >= 0
    assert summary.train_images == 12  # counted on every step


class HostReads(L.Callback):
    """Counts the tensor values read on the host (on a GPU each is a host-device sync: ``item``,
    ``bool``, ``float``, ``tolist`` ...) during each training step, its hooks included, through a
    ``TorchFunctionMode`` over the whole fit; a step's count runs to the next step's start."""

    READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu"}

    def __init__(self):
        import torch
        from torch.overrides import TorchFunctionMode

        counter = self
        self.by_step: dict[int, list[str]] = {}
        self.step = None

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                name = getattr(func, "__name__", "")
                if counter.step is not None and name in counter.READS:
                    import traceback

                    stack = traceback.extract_stack()[:-1]
                    # The optimizers' step counters live on the CPU on GPU runs too (not fused or
                    # capturable): reading them waits for nothing.
                    if not any("/torch/optim/" in frame.filename for frame in stack):
                        where = [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in stack[-12:]]
                        counter.by_step.setdefault(counter.step, []).append(f"{name} at {' < '.join(reversed(where))}")
                return func(*args, **(kwargs or {}))

        self.mode, self.torch = Mode(), torch

    def on_fit_start(self, trainer, pl_module):
        self.mode.__enter__()

    def on_fit_end(self, trainer, pl_module):
        self.mode.__exit__(None, None, None)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.step = trainer.global_step

    def on_train_epoch_end(self, trainer, pl_module):
        self.step = None  # the epoch's end and validation read values: once an epoch


def test_no_value_is_read_off_the_device_between_logging_steps(make_cfg):
    """The default callbacks (progress bar, checkpoints, LR monitor, image logger), a logger, the
    run summary, seeding and the divergence check: the steps between logging steps read no tensor
    value on the host (the GPU check counted two syncs a step on an H200 before: the progress bar)."""
    from segsweep.callbacks import RunSummary
    from segsweep.callbacks.logging_steps import is_logging_step
    from segsweep.train import build_datamodule, build_task, build_trainer

    cfg = make_cfg("callbacks=default", "logger=csv", "trainer.enable_progress_bar=true", "trainer.max_epochs=2",
                   "data.splits.train.num_images=48", "trainer.log_every_n_steps=4")
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule)
    trainer = build_trainer(cfg, RunSummary())
    reads = HostReads()
    trainer.callbacks.insert(0, reads)
    trainer.fit(task, datamodule=datamodule)
    steps = trainer.global_step
    between = [s for s in range(steps) if not is_logging_step(trainer, s)]
    assert len(between) >= 12
    assert {s: reads.by_step[s] for s in between if s in reads.by_step} == {}
    assert any(reads.by_step.get(s) for s in range(steps) if is_logging_step(trainer, s))  # the counter counts
