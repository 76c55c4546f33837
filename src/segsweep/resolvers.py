"""OmegaConf resolvers the configs use; registered when segsweep is imported."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf


def sweep_group() -> str | None:
    """The W&B group of a multirun's jobs: its sweep dir's date and time (None for single runs)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return "_".join(Path(HydraConfig.get().sweep.dir).parts[-2:])


def join_name(*parts) -> str:
    """``arch-encoder-loss``, leaving out empty parts (models without an encoder)."""
    return "-".join(str(part) for part in parts if part not in (None, ""))


def register() -> None:
    for name, resolver in (("sweep_group", sweep_group), ("join_name", join_name)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
