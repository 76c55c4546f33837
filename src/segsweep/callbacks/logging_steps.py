"""The one rule for "is this a logging step", shared by the task and the callbacks.

Lightning sends a training step's logged values to the loggers after the steps whose index + 1 is
a multiple of ``trainer.log_every_n_steps``. Per-step work that need not run at every step (the
per-step loss log, the divergence check, the peak-memory probe, the progress bar's metrics) runs on
these steps only: reading a value off the GPU waits for the device (a host-device sync), and these
are the steps where Lightning's own logging reads values anyway.
"""

from __future__ import annotations


def is_logging_step(trainer, step: int | None = None) -> bool:
    """Whether training step ``step`` (0-based; default ``trainer.global_step``: the step running
    now, before its optimizer step) is one whose logged values Lightning writes. After the
    optimizer step (``on_train_batch_end``) the step just done is ``trainer.global_step - 1``."""
    step = trainer.global_step if step is None else step
    return (step + 1) % max(trainer.log_every_n_steps, 1) == 0
