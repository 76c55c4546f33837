"""Learning-rate schedules torch does not have: cosine decay over a wall-clock budget.

Under ``trainer.max_time`` (the sweeps that compare set-ups at equal time, e.g.
``sweep=isbi_2d_25d_3d``) an epoch-counted cosine is cut wherever the time runs out: a job that
fits fewer epochs into the budget (a 3D net, a slower machine) stops at a high learning rate and
is judged before it ever anneals. ``BudgetCosineLR`` decays over whichever ends first, the run's
steps or its time, so every job ends its budget annealed.
"""

from __future__ import annotations

import math
import re
import time
from datetime import timedelta

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def budget_seconds(value) -> float | None:
    """Seconds of a ``trainer.max_time`` value: ``"DD:HH:MM:SS"``, a dict of ``timedelta``
    fields (``{minutes: 10}``), seconds, or ``None`` (no budget)."""
    if value is None:
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, dict):
        seconds = timedelta(**value).total_seconds()
    elif isinstance(value, str) and re.fullmatch(r"\d+:\d+:\d+:\d+", value.strip()):
        days, hours, minutes, secs = (int(v) for v in value.strip().split(":"))
        seconds = timedelta(days=days, hours=hours, minutes=minutes, seconds=secs).total_seconds()
    else:
        raise ValueError(f"time budget {value!r} is not DD:HH:MM:SS, a dict like {{minutes: 10}}, or seconds")
    if seconds <= 0:
        raise ValueError(f"time budget {value!r} must be positive")
    return seconds


class BudgetCosineLR(LRScheduler):
    """Cosine decay from each group's initial learning rate to ``eta_min``, stepped per training
    step, over whichever ends first: ``total_steps`` or ``budget`` of wall-clock time.

    Progress is ``max(step / total_steps, elapsed / budget)``. ``elapsed`` adds up the time between
    consecutive steps (validation between epochs included, as ``trainer.max_time`` counts it) and is
    saved with the scheduler in checkpoints, so a resumed run goes on from the time it had used;
    the time between a killed attempt's last step and the kill is not counted.

    Its config says ``interval: step`` (``conf/scheduler/cosine_budget.yaml``): the task steps it
    every batch and passes ``total_steps``, the Trainer's estimate of the run's optimizer steps.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, budget=None, eta_min: float = 0.0,
                 last_epoch: int = -1):
        if total_steps < 1:
            raise ValueError(f"BudgetCosineLR total_steps={total_steps} must be >= 1")
        self.total_steps, self.budget, self.eta_min = int(total_steps), budget_seconds(budget), float(eta_min)
        self.elapsed = 0.0
        self._last_step_time: float | None = None
        super().__init__(optimizer, last_epoch)

    def progress(self) -> float:
        by_steps = self.last_epoch / self.total_steps
        by_time = self.elapsed / self.budget if self.budget else 0.0
        return min(1.0, max(by_steps, by_time))

    def get_lr(self) -> list[float]:
        factor = (1 + math.cos(math.pi * self.progress())) / 2
        return [self.eta_min + (base - self.eta_min) * factor for base in self.base_lrs]

    def step(self, epoch=None) -> None:
        now = time.monotonic()
        if self._last_step_time is not None:
            self.elapsed += now - self._last_step_time
        self._last_step_time = now
        super().step(epoch)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._last_step_time = None  # the saving process's clock: this attempt starts its own
