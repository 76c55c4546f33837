"""Load encoder weights from a local file (offline alternative to smp's hub download)."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import torch
from torch import nn

_SHOW = 5  # how many missing / unexpected keys an error message lists


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            # weights_only: a state dict needs no pickled code, and this refuses files that carry it
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            if path.suffix != ".ckpt":
                raise
            # Lightning checkpoints pickle their hyper-parameters (OmegaConf objects); Lightning
            # itself loads them in full, and this is a local file the config names.
            state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # Lightning checkpoints and similar wrappers
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def _best_prefix(keys: list[str], wanted: set[str]) -> str:
    """The key prefix (e.g. "module.", "encoder.", "model.encoder.") under which most keys match."""
    counts: Counter[str] = Counter()
    for key in keys:
        if key in wanted:
            counts[""] += 1
        parts = key.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[i:]) in wanted:
                counts[".".join(parts[:i]) + "."] += 1
    if not counts:
        return ""
    # most matches first, the shorter prefix on ties
    return min(counts, key=lambda prefix: (-counts[prefix], len(prefix)))


def _key_list(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (", ..." if len(keys) > _SHOW else "")


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a local state dict into ``encoder`` strictly.

    ``path`` may be a torch ``.pth``/``.pt`` state dict, a dict with a ``"state_dict"`` key (e.g. a
    Lightning checkpoint) or a ``.safetensors`` file. Keys may carry a common prefix such as
    ``"module."`` or ``"encoder."``; when one is found, only keys under it are used, so a whole
    model's state dict also works. Missing or unexpected keys raise a ``ValueError`` naming the
    file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Encoder weights file not found: {path} (set by config key encoder.weights_path)"
        )
    state = _read_state_dict(path)
    expected = set(encoder.state_dict())
    prefix = _best_prefix(list(state), expected)
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        where = f" (after removing prefix '{prefix}')" if prefix else ""
        raise ValueError(
            f"Encoder weights in {path} do not match the encoder{where}: "
            f"{len(missing)} missing keys [{_key_list(missing)}], "
            f"{len(unexpected)} unexpected keys [{_key_list(unexpected)}]. "
            "Was the file saved from the same encoder (name, in_channels, depth)?"
        )
    try:
        # nn.Module's own loader: some smp encoders override load_state_dict without `strict`.
        nn.Module.load_state_dict(encoder, state, strict=True)
    except RuntimeError as err:  # shape mismatches, e.g. other in_channels
        raise ValueError(f"Encoder weights in {path} do not fit the encoder: {err}") from err
