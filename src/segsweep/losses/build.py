"""How a ``conf/loss`` factory becomes a loss: ``build_loss``, ``WeightedSum``, the mode registry.

Every loss target takes ``mode`` and ``ignore_index`` as keyword arguments (smp's own losses do;
segsweep's adapters are written to), so completing a factory is one call for every loss. A loss
that supports only one mode says so with a ``modes`` class attribute; anything without one
(smp's Dice, Jaccard, Tversky, ...) supports both. The list of losses valid for a mode, quoted in
errors, is read from the shipped ``loss`` config group itself (the package ``segsweep.conf``, i.e.
the repository's ``conf/``), so it cannot drift from the configs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from importlib.resources import files
from typing import Any

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

MODES = ("binary", "multiclass")
# The shipped loss group, found by import (a checkout, an editable install or a wheel alike).
LOSS_CONF_DIR = files("segsweep.conf") / "loss"


def build_loss(
    factory: Callable[..., nn.Module] | Mapping, mode: str, ignore_index: int | None
) -> nn.Module:
    """Complete a loss factory with the task's ``mode`` and ``ignore_index``.

    Args:
        factory: a ``_partial_: true`` loss (what ``instantiate`` makes of a ``conf/loss`` node),
            or the config node itself.
        mode: ``"binary"`` (logits ``(N, 1, H, W)``, targets in {0, 1}) or ``"multiclass"``
            (logits ``(N, K, H, W)``, targets class ids); decided by the task.
        ignore_index: target value whose pixels no loss sees, or ``None``.
    """
    if mode not in MODES:
        raise ValueError(f"loss mode must be one of {MODES}, got {mode!r}")
    if isinstance(factory, Mapping):
        factory = instantiate(factory)
    loss = factory(mode=mode, ignore_index=ignore_index)
    if not isinstance(loss, nn.Module):
        raise TypeError(f"a loss factory must build a torch.nn.Module, got {type(loss).__name__}")
    return loss


def check_mode(loss_cls: type, mode: str) -> None:
    """Raise a ValueError naming the loss, the mode and the losses valid for it."""
    modes = supported_modes(loss_cls)
    if mode in modes:
        return
    names = [n for n, node in loss_configs().items() if get_object(node._target_) is loss_cls]
    name = ", ".join(names) or loss_cls.__name__
    raise ValueError(
        f"loss {name!r} is {'/'.join(modes)}-only; this task is {mode}; "
        f"use one of: {', '.join(losses_for_mode(mode))}"
    )


def supported_modes(loss_cls: type) -> tuple[str, ...]:
    return tuple(getattr(loss_cls, "modes", MODES))


@functools.cache
def loss_configs() -> dict[str, DictConfig]:
    """The shipped ``loss/*.yaml`` nodes by name."""
    yamls = sorted((p for p in LOSS_CONF_DIR.iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name)
    return {p.name.removesuffix(".yaml"): OmegaConf.create(p.read_text()) for p in yamls}


def config_modes(node: DictConfig) -> set[str]:
    """The modes a loss config works in (for a weighted sum: those all its terms work in)."""
    target = get_object(node._target_)
    if target is WeightedSum:
        return set.intersection(*(config_modes(term.loss) for term in node.terms.values()))
    return set(supported_modes(target))


def losses_for_mode(mode: str) -> list[str]:
    """Names of the ``conf/loss`` configs usable in ``mode``."""
    return [name for name, node in loss_configs().items() if mode in config_modes(node)]


class WeightedSum(nn.Module):
    """A weighted sum of losses declared in YAML; ``last_terms`` keeps each term's last value.

    Args:
        terms: ``{name: {loss: <_partial_ loss>, weight: <float>}}``; every term is built with the
            task's mode and ignore_index. Weights must be finite, >= 0 and not all zero. The task
            logs each term as ``<stage>/loss/<name>``.
    """

    def __init__(self, mode: str, ignore_index: int | None, terms: Mapping[str, Mapping]):
        super().__init__()
        if not terms:
            raise ValueError("WeightedSum needs at least one term")
        losses, self.weights = {}, {}
        for name, term in terms.items():
            if set(term) != {"loss", "weight"}:
                raise ValueError(
                    f"WeightedSum term {name!r} needs exactly the keys 'loss' and 'weight'"
                )
            self.weights[name] = _check_weight(name, term["weight"])
            try:
                losses[name] = build_loss(term["loss"], mode=mode, ignore_index=ignore_index)
            except ValueError as err:
                raise ValueError(f"WeightedSum term {name!r}: {err}") from err
        if not any(self.weights.values()):
            raise ValueError(f"WeightedSum weights are all zero: {self.weights}")
        self.terms = nn.ModuleDict(losses)
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        values = {name: loss(logits, target) for name, loss in self.terms.items()}
        self.last_terms = {name: value.detach() for name, value in values.items()}
        return sum(self.weights[name] * value for name, value in values.items())


def _check_weight(name: str, weight: Any) -> float:
    try:
        value = float(weight)
    except (TypeError, ValueError):
        raise ValueError(
            f"WeightedSum term {name!r}: weight must be a number, got {weight!r}"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"WeightedSum term {name!r}: weight must be finite and >= 0, got {weight!r}"
        )
    return value
