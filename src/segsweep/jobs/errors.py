"""The root cause of a failed job in one line: what metrics.json and the leaderboard show.

Two wrappers hide it otherwise. A DataLoader worker's exception reaches the main process re-raised
as ``Caught ValueError in DataLoader worker process 0. Original Traceback ...`` with the real message
at the end of a long text (a leaderboard cell showed only the wrapper's first words). A DDP rank's
exception lives in another process: the launcher gets it as ``RankFailed`` from the rank's own
error file.
"""

from __future__ import annotations

import re

_WORKER = re.compile(r"^Caught \w+ in (DataLoader worker process \d+)\.\nOriginal Traceback")


class RankFailed(RuntimeError):
    """A DDP rank's own error, raised by the launcher; the message carries the rank's traceback
    (so ``traceback.format_exc()`` in the launching process shows where the rank failed)."""

    def __init__(self, rank: int, error: str, rank_traceback: str):
        super().__init__(f"DDP rank {rank} failed: {error}\n--- traceback of rank {rank} ---\n{rank_traceback}")
        self.rank, self.error, self.rank_traceback = rank, error, rank_traceback


def _last_exception_line(formatted: str) -> str:
    """``Type: message`` from a formatted traceback: the text after its last frame."""
    lines = formatted.rstrip("\n").split("\n")
    start = len(lines) - 1
    while start > 0 and not lines[start - 1].startswith(" "):  # frames and code lines are indented
        start -= 1
    return " ".join(line.strip() for line in lines[start:] if line.strip())


def describe_error(err: BaseException) -> str:
    """``Type: message`` of the exception that explains a failure: a DDP rank's own error, the
    error inside a DataLoader worker (file and reason, not the wrapper), and ``caused by`` the
    exception it was raised from when that adds something."""
    if isinstance(err, RankFailed):
        return f"rank {err.rank}: {err.error}"
    text = str(err)
    worker = _WORKER.match(text)
    if worker:
        return f"{_last_exception_line(text)} (in {worker.group(1)})"
    described = f"{type(err).__name__}: {text}" if text else type(err).__name__
    cause = err.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        described += f" (caused by {describe_error(cause)})"
    return described
