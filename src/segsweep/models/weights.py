"""Load weights from a local file (offline alternative to smp's and torchvision's hub downloads).

One path for every network: ``read_state_dict`` reads the file, ``load_state`` finds the key
prefix under which it fits the module and loads it, strictly (an encoder: every key must match)
or partially (Mask R-CNN: the tensors that fit, class heads and first convs of other shapes
skipped with a warning).
"""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

_SHOW = 5  # how many missing / unexpected keys an error message lists


def read_state_dict(path: str | Path, config_key: str = "encoder.weights_path") -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (``.pth``/``.pt``, a Lightning ``.ckpt`` or ``.safetensors``);
    a missing file names ``config_key``, the setting that pointed at it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Weights file not found: {path} (set by config key {config_key})")
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


def fitting(state: dict[str, torch.Tensor], module: nn.Module) -> tuple[str, dict[str, torch.Tensor]]:
    """The key prefix under which ``state`` fits ``module`` best, and its tensors of the right name
    and shape for it, prefix removed."""
    own = module.state_dict()
    prefix = _best_prefix(list(state), set(own))
    state = _under(state, prefix)
    return prefix, {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}


def _under(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` whose keys start with ``prefix``, without it."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)} if prefix else state


def load_state(
    module: nn.Module, state: dict[str, torch.Tensor], path: str | Path, name: str = "Encoder",
    partial: bool = False,
) -> None:
    """Load ``state`` (read from ``path``) into ``module``, keys under their best common prefix
    (``"module."``, ``"encoder."``, ``"net."``, ...).

    Strict by default: missing or unexpected keys, or shapes that differ, raise a ``ValueError``
    naming the file. ``partial``: load the tensors whose name and shape fit, warn about the others,
    raise only when none fits.
    """
    expected = set(module.state_dict())
    prefix, usable = fitting(state, module)
    state = _under(state, prefix)
    if partial:
        if not usable:
            raise ValueError(f"no tensor of {path} fits the {name} (keys like {list(state)[:3]})")
        skipped = sorted(set(state) - set(usable))
        if skipped:
            rank_zero_warn(f"{path}: {len(skipped)} tensors not loaded into the {name} (shape or name "
                           f"differs), e.g. {skipped[:_SHOW]}")
        nn.Module.load_state_dict(module, usable, strict=False)
        return
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        where = f" (after removing prefix '{prefix}')" if prefix else ""
        raise ValueError(
            f"{name} weights in {path} do not match the {name.lower()}{where}: "
            f"{len(missing)} missing keys [{_key_list(missing)}], "
            f"{len(unexpected)} unexpected keys [{_key_list(unexpected)}]. "
            "Was the file saved from the same encoder (name, in_channels, depth)?"
        )
    try:
        # nn.Module's own loader: some smp encoders override load_state_dict without `strict`.
        nn.Module.load_state_dict(module, state, strict=True)
    except RuntimeError as err:  # shape mismatches, e.g. other in_channels
        raise ValueError(f"{name} weights in {path} do not fit the {name.lower()}: {err}") from err


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a local state dict into ``encoder`` strictly.

    ``path`` may be a torch ``.pth``/``.pt`` state dict, a dict with a ``"state_dict"`` key (e.g. a
    Lightning checkpoint) or a ``.safetensors`` file. Keys may carry a common prefix such as
    ``"module."`` or ``"encoder."``; when one is found, only keys under it are used, so a whole
    model's state dict also works. Missing or unexpected keys raise a ``ValueError`` naming the
    file.
    """
    load_state(encoder, read_state_dict(path, "encoder.weights_path"), path)
