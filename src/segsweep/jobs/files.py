"""A job dir's files and how they are written: whole or not at all, errors naming the file.

Free of torch and Lightning: ``segsweep-report`` reads job dirs through this module.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

METRICS_FILE = "metrics.json"  # a job's status and results (segsweep.jobs.records)
RECORD_FILE = "job.json"  # the resolved config a job dir was started with (segsweep.jobs.plan)
PREVIOUS_DIR = "previous"  # earlier results of a re-run job dir, never deleted
CHECKPOINT_DIR = "checkpoints"
TEMP_SUFFIX = ".tmp"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """No space (or quota) left while writing a file; the message names the file and the free space."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        super().__init__(errno.ENOSPC, f"no space left on device writing {self.path} "
                                       f"({free_space(self.path)} free there)")

    def __str__(self) -> str:
        return self.strerror


def free_space(path: str | Path) -> str:
    """Free space on the file system holding ``path`` (its nearest existing parent), readable."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if free < 1024 or unit == "GB":
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1024
    return "unknown"


def is_disk_full(err: BaseException | None) -> bool:
    """Whether ``err``, or an exception it was raised from or during, is a full disk or quota."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _DISK_FULL:
            return True
        err = err.__cause__ or err.__context__
    return False


def write_atomic(path: str | Path, data: bytes | str | Callable[[BinaryIO], None]) -> Path:
    """Write ``data`` (bytes, text, or a function writing to a binary file) to ``path`` whole.

    The temporary file sits next to the target and is renamed over it (``os.replace``): a rename
    within one file system is atomic, so a kill at any moment leaves the old file or the new one.
    (A temporary file elsewhere, say in ``TMPDIR`` on another file system, is copied over the
    target instead, and a kill mid-copy leaves a truncated file.) On any error the temporary file
    is removed; a full disk raises :class:`DiskFullError`, one line naming the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{TEMP_SUFFIX}")
    try:
        with open(tmp, "wb") as file:
            if callable(data):
                data(file)
            else:
                file.write(data.encode() if isinstance(data, str) else data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if is_disk_full(err):
            raise DiskFullError(path) from None  # the chain says nothing more, in 50 lines
        raise
    return path


def finite(value):
    """``value`` with every non-finite float (NaN, inf) replaced by ``None``: JSON has none."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_json(path: str | Path, payload: dict) -> Path:
    """``payload`` as strict JSON (non-finite numbers as null, other objects as text), atomically."""
    text = json.dumps(finite(json.loads(json.dumps(payload, default=str))), indent=2, allow_nan=False)
    return write_atomic(path, text + "\n")


def load_json(path: str | Path) -> dict:
    """A JSON object from ``path``; ``ValueError`` saying why it cannot be read (missing, truncated
    by a killed writer of an older segsweep, not an object)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: {type(err).__name__}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a JSON {type(data).__name__}, not an object")
    return data


def read_json(path: str | Path) -> dict | None:
    """A JSON object from ``path``, or ``None`` when absent or unreadable."""
    try:
        return load_json(path)
    except ValueError:
        return None


def process_alive(host: str | None, pid: int | None) -> bool | None:
    """Whether ``pid`` runs on ``host``; ``None`` when it cannot be told (another host)."""
    if not pid or host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
