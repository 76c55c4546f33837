"""Loggers: W&B that never prompts (online with credentials, offline without), CSV that resumes."""

from __future__ import annotations

import csv
import netrc
import os
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, ListConfig, OmegaConf


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_logger(save_dir: str, offline: bool | None = None, **kwargs) -> WandbLogger:
    """A ``WandbLogger``; ``offline=None`` decides from ``WANDB_MODE`` and the credentials found.

    Offline runs are written under ``save_dir/wandb`` and can be uploaded later with
    ``wandb sync <dir>``. Other keyword arguments go to ``wandb.init`` (e.g. ``job_type``).
    """
    mode = os.environ.get("WANDB_MODE")
    if offline is None:
        offline = mode in ("offline", "dryrun") or (mode != "online" and not wandb_has_credentials())
    if offline:
        kwargs.setdefault("mode", "offline")  # wandb.init's own switch: it does not ask to log in
        rank_zero_info(
            f"W&B: no credentials found (WANDB_API_KEY / ~/.netrc), logging offline to {save_dir}/wandb; "
            f"upload later with `wandb sync {save_dir}/wandb/offline-run-*`"
        )
    os.makedirs(save_dir, exist_ok=True)
    # Hydra hands nested nodes over as DictConfig/ListConfig; wandb.init reads a config object's
    # attributes (as for argparse), which on a DictConfig are OmegaConf internals: pass plain values.
    kwargs = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig | ListConfig) else v
              for k, v in kwargs.items()}
    if kwargs.get("tags"):  # W&B refuses tags over 64 characters; the full overrides stay in the config
        kwargs["tags"] = [shorten_tag(str(tag)) for tag in kwargs["tags"]]
    return WandbLogger(save_dir=save_dir, offline=offline, **kwargs)


WANDB_TAG_LIMIT = 64


def shorten_tag(tag: str) -> str:
    """``tag`` cut to W&B's limit, keeping its start and end (``data.root=/lo…/isbi2012``)."""
    if len(tag) <= WANDB_TAG_LIMIT:
        return tag
    keep = WANDB_TAG_LIMIT - 1
    return tag[: keep // 2] + "…" + tag[-(keep - keep // 2):]


class _ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; this one continues it.

    A resumed job repeats the steps after its checkpoint, which the killed attempt may have logged
    already (the learning rate at the epoch's start, a validation row): a value logged again for a
    step the file holds replaces the old one, so no row is duplicated.
    """

    def _check_log_dir_exists(self) -> None:
        self._last_step: int | None = None  # the file's last step, while new rows may repeat it
        if self._fs.isfile(self.metrics_file_path):
            rows, self.metrics_keys = self._read()
            steps = [int(float(row["step"])) for row in rows if row.get("step")]
            self._last_step = max(steps) if steps else None

    def _read(self) -> tuple[list[dict], list[str]]:
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            return list(reader), sorted(reader.fieldnames or [])

    def save(self) -> None:
        if self.metrics and self._last_step is not None:
            if min(int(row["step"]) for row in self.metrics) <= self._last_step:
                self._drop_logged_again()
            else:
                self._last_step = None  # past the old file's end: plain appends from now on
        super().save()

    def _drop_logged_again(self) -> None:
        """Rewrite the file without the cells the pending rows log again (same step and key)."""
        again = {(int(row["step"]), key) for row in self.metrics for key in row if key not in ("step", "epoch")}
        rows, keys = self._read()
        kept = []
        for row in rows:
            step = int(float(row["step"]))
            row = {key: ("" if (step, key) in again else value) for key, value in row.items()}
            if any(value != "" for key, value in row.items() if key not in ("step", "epoch")):
                kept.append(row)
        with self._fs.open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=keys)
            writer.writeheader()
            writer.writerows(kept)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose resumed job goes on in the same ``metrics.csv`` (with ``version: 0``).

    Lightning's own logger starts the file over when the version dir exists, which would drop the
    epochs of the attempts before a kill.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment
