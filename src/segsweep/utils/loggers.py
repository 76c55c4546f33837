"""Weights & Biases that never prompts: online with credentials, offline (syncable) without."""

from __future__ import annotations

import netrc
import os
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info


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
