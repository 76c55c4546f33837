"""Checkpoint files: written whole, read with errors that name the file.

``torch.load`` on a text file, random bytes or a truncated zip raises pickle, unicode or zip
errors that do not say which file or what to do; every entry point that takes a checkpoint goes
through :func:`read_checkpoint` instead. Lightning writes checkpoints through fsspec, whose
"atomic" transaction puts its temporary file in ``TMPDIR``: on another file system the final move
is a copy over the target, and a kill mid-copy leaves a truncated ``last.ckpt``.
:class:`AtomicCheckpointIO` writes next to the target and renames instead.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from segsweep.jobs.files import write_atomic


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file."""


def read_checkpoint(path: str | Path, require_segsweep: bool = True, head_only: bool = False,
                    map_location="cpu") -> dict:
    """The checkpoint dict saved by Lightning in ``path``.

    Args:
        require_segsweep: refuse checkpoints without the ``segsweep_task`` entry segsweep writes.
        head_only: only check the file (every zip member's CRC, then a memory-mapped load that
            reads no tensor data into memory): for deciding whether a job can resume from it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is not a torch checkpoint (not a zip archive: a text, "
                              "truncated or foreign file?)")
    if head_only:
        try:
            with zipfile.ZipFile(path) as archive:
                broken = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise CheckpointError(f"checkpoint {path} is damaged ({err})") from err
        if broken is not None:
            raise CheckpointError(f"checkpoint {path} is damaged (member {broken} fails its CRC check)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False, mmap=head_only)
    except (RuntimeError, pickle.UnpicklingError, EOFError, UnicodeDecodeError, zipfile.BadZipFile,
            AttributeError, ModuleNotFoundError, OSError) as err:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a Lightning checkpoint")
    if require_segsweep and "segsweep_task" not in checkpoint:
        raise CheckpointError(f"{path} is not a segsweep checkpoint (no 'segsweep_task' entry: saved by another "
                              "program?)")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer for local paths, saving through :func:`write_atomic` (a kill
    leaves the previous checkpoint whole; a full disk is one line naming the file)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote file systems: Lightning's own
            return super().save_checkpoint(checkpoint, path, storage_options)
        write_atomic(path, lambda file: torch.save(checkpoint, file))
