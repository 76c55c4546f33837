"""Replicas: jobs that differ only in their seed or data fold are one *set-up* run several times.

Light on purpose (no torch, pandas): the config resolvers use it in every job, the leaderboard
(:mod:`segsweep.reporting.leaderboard`) to group its rows.
"""

from __future__ import annotations

from collections.abc import Iterable

REPLICA_KEYS = ("seed", "data.fold")


def override_key(override: str) -> str:
    """``+data.fold=1`` -> ``data.fold``."""
    return str(override).partition("=")[0].lstrip("+~")


def is_replica_key(key: str) -> bool:
    return key.lstrip("+~") in REPLICA_KEYS


def setup_key(overrides: Iterable[str]) -> str:
    """A set-up's name, shared by its replicas: the overrides without replica keys, joined by
    commas (``default`` when none). W&B gets it as the ``setup`` config value, not as a tag or
    job_type: those are cut at 64 characters (wandb/wandb#6402), and a cut key could merge two
    set-ups."""
    kept = [str(o) for o in overrides if not is_replica_key(override_key(o))]
    return ",".join(kept) or "default"


def replica_seeds(repeats) -> str:
    """``3`` -> ``"1,2,3"``: the seed sweep of ``sweep=repeats`` (``sweep.repeats=<n>``)."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"sweep.repeats={repeats!r} must be a whole number of seeds >= 1")
    return ",".join(str(seed) for seed in range(1, repeats + 1))
