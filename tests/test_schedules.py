"""BudgetCosineLR: cosine decay over the run's steps or its wall-clock budget, whichever ends first."""

from __future__ import annotations

import json
import math

import pytest
import torch

from segsweep import schedules
from segsweep.schedules import BudgetCosineLR, budget_seconds
from segsweep.train import train

# Cosine from 1 to 0 at a quarter, half and three quarters of the way (worked by hand):
# (1 + cos(pi/4)) / 2, (1 + cos(pi/2)) / 2, (1 + cos(3pi/4)) / 2.
QUARTERS = [1.0, (2 + math.sqrt(2)) / 4, 0.5, (2 - math.sqrt(2)) / 4, 0.0]


def optimizer(lr: float = 1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(schedules.time, "monotonic", fake)
    return fake


def lrs_over(scheduler, opt, steps: int, seconds_per_step: float, clock) -> list[float]:
    seen = [opt.param_groups[0]["lr"]]
    for _ in range(steps):
        clock.now += seconds_per_step
        opt.step()
        scheduler.step()
        seen.append(opt.param_groups[0]["lr"])
    return seen


def test_without_a_budget_it_is_a_cosine_over_the_steps(clock):
    opt = optimizer()
    assert lrs_over(BudgetCosineLR(opt, total_steps=4), opt, 4, 1.0, clock) == pytest.approx(QUARTERS)


def test_a_budget_that_ends_first_sets_the_pace(clock):
    opt = optimizer()
    # The clock starts when the scheduler is made (Lightning makes it as training starts).
    scheduler = BudgetCosineLR(opt, total_steps=1000, budget="00:00:00:10")  # 10 s
    assert lrs_over(scheduler, opt, 4, 2.5, clock) == pytest.approx(QUARTERS)  # 2.5, 5, 7.5, 10 s of 10


def test_eta_min_is_the_floor(clock):
    opt = optimizer(lr=0.1)
    lrs = lrs_over(BudgetCosineLR(opt, total_steps=2, eta_min=0.01), opt, 3, 1.0, clock)
    assert lrs == pytest.approx([0.1, 0.01 + 0.09 / 2, 0.01, 0.01])


def test_a_resumed_scheduler_goes_on_from_the_time_it_had_used(clock):
    opt = optimizer()
    first = BudgetCosineLR(opt, total_steps=1000, budget=10.0)
    lrs_over(first, opt, 2, 2.5, clock)  # 5 s used
    state = first.state_dict()
    clock.now += 3600  # killed, restarted an hour later: that hour is not the run's
    opt2 = optimizer()
    resumed = BudgetCosineLR(opt2, total_steps=1000, budget=10.0)
    resumed.load_state_dict(state)
    assert resumed.elapsed == pytest.approx(5.0)
    # The restart's first step starts its clock (the time since the restart is set-up), then 2.5 s.
    lrs = lrs_over(resumed, opt2, 2, 2.5, clock)
    assert resumed.elapsed == pytest.approx(7.5) and lrs[-1] == pytest.approx(QUARTERS[3], abs=1e-3)


@pytest.mark.parametrize("value, seconds", [("00:00:10:00", 600), ("01:02:03:04", 93784), ({"minutes": 2}, 120),
                                            (90, 90), (None, None)])
def test_budgets_read_as_trainer_max_time_does(value, seconds):
    assert budget_seconds(value) == seconds


@pytest.mark.parametrize("value", ["10 minutes", "00:10:00", 0, {"fortnights": 1}])
def test_a_bad_budget_is_refused_naming_it(value):
    with pytest.raises((ValueError, TypeError), match="fortnights" if isinstance(value, dict) else repr(value)):
        budget_seconds(value)


def test_training_under_cosine_budget_ends_at_eta_min(make_cfg, tmp_path):
    cfg = make_cfg("scheduler=cosine_budget", "trainer.max_epochs=2", "trainer.max_time=00:01:00:00",
                   "callbacks=default", "~callbacks.progress_bar", "~callbacks.image_logger")
    train(cfg)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    scheduler = checkpoint["lr_schedulers"][0]
    assert scheduler["total_steps"] == 4 and scheduler["last_epoch"] == 4  # 2 epochs of 2 batches, per step
    assert 0 < scheduler["elapsed"] < 3600
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-6)
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "completed"


def test_a_changed_budget_is_a_changed_run(make_cfg):
    # trainer.max_time may change between attempts, but under cosine_budget it is the schedule's
    # length: the job dir refuses it, naming the key, as it refuses a cosine's T_max.
    from segsweep.jobs.plan import JobDirConflict, plan_job

    assert plan_job(make_cfg("scheduler=cosine_budget", "trainer.max_time=00:00:10:00")).action == "start"
    with pytest.raises(JobDirConflict, match=r"scheduler\.budget: '00:00:10:00' there, '00:00:20:00' now"):
        plan_job(make_cfg("scheduler=cosine_budget", "trainer.max_time=00:00:20:00"))


def test_any_scheduler_config_with_interval_step_is_stepped_each_batch_over_the_run(make_cfg, tmp_path):
    """The config says how a scheduler steps (``interval: step``), not an attribute of its class:
    torch's OneCycleLR, configured so, gets the run's optimizer steps and steps every batch."""
    cfg = make_cfg("scheduler=cosine", "trainer.max_epochs=2", "~scheduler.T_max", "~scheduler.eta_min",
                   "scheduler._target_=torch.optim.lr_scheduler.OneCycleLR", "+scheduler.max_lr=0.01",
                   "+scheduler.interval=step", "callbacks=default", "~callbacks.progress_bar",
                   "~callbacks.image_logger")
    train(cfg)
    scheduler = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["lr_schedulers"][0]
    assert scheduler["total_steps"] == 4 and scheduler["last_epoch"] == 4  # 2 epochs of 2 batches


def test_an_unknown_interval_is_refused_naming_the_key(make_cfg):
    from segsweep.train import build_datamodule, build_task

    cfg = make_cfg("scheduler=cosine_budget", "scheduler.interval=batch")
    task = build_task(cfg, build_datamodule(cfg))
    task.trainer = type("T", (), {"estimated_stepping_batches": 4})()
    with pytest.raises(ValueError, match=r"scheduler\.interval='batch'"):
        task.configure_optimizers()
