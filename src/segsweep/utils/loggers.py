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
    ``wandb sync <dir>``.
    """
    mode = os.environ.get("WANDB_MODE")
    if offline is None:
        offline = mode in ("offline", "dryrun") or (mode != "online" and not wandb_has_credentials())
    if offline:
        os.environ.setdefault("WANDB_MODE", "offline")  # also stops wandb.init from asking to log in
        rank_zero_info(
            f"W&B: no credentials found (WANDB_API_KEY / ~/.netrc), logging offline to {save_dir}/wandb; "
            f"upload later with `wandb sync {save_dir}/wandb/offline-run-*`"
        )
    os.makedirs(save_dir, exist_ok=True)
    return WandbLogger(save_dir=save_dir, offline=offline, **kwargs)
