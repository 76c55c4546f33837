"""The search space in the override syntax of Hydra's official Optuna sweeper, as Optuna
distributions: ``choice(a, b)``, ``a,b``, ``range(start, stop[, step])``, ``interval(low, high)``,
``tag(log, interval(low, high))``; a plain value is a fixed override of every trial.

Written here because the official plugin's mapping targets Optuna 2 (its distribution classes
are gone in Optuna 4) and that plugin pins ``optuna<3``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution


def distribution_from_override(override: Override) -> BaseDistribution | str:
    """One parsed override -> an Optuna distribution, or its value as a string if it is fixed."""
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    name = override.get_key_element()
    if override.is_choice_sweep() or (override.is_range_sweep() and override.value().shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():  # Hydra's range excludes stop; Optuna's high is included
        values = list(override.sweep_iterator())
        if not values:
            raise ValueError(f"hydra.sweeper.params.{name}: {override.input_line} holds no value")
        sweep = override.value()
        low, high = min(values), max(values)
        if all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
            return IntDistribution(int(low), int(high), step=abs(int(sweep.step)))
        return FloatDistribution(float(low), float(high), step=abs(float(sweep.step)))
    if override.is_interval_sweep():  # Hydra parses interval bounds as floats: range() for ints
        sweep = override.value()
        return FloatDistribution(float(sweep.start), float(sweep.end), log="log" in sweep.tags)
    raise ValueError(f"hydra.sweeper.params.{name}: {override.input_line} is not supported "
                     "(use choice(...), range(...), interval(...) or tag(log, interval(...)))")


def parse_search_space(overrides: Iterable[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """``["optimizer.lr=tag(log, interval(1e-4, 1e-2))", "model=unet,fpn", "seed=1"]`` ->
    (distributions by override key, fixed values by override key). A later override of a key wins
    (the command line after ``hydra.sweeper.params``)."""
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.get_key_element()
        value = distribution_from_override(override)
        distributions.pop(key, None)
        fixed.pop(key, None)
        if isinstance(value, BaseDistribution):
            distributions[key] = value
        else:
            fixed[key] = value
    return distributions, fixed


def grid_values(name: str, distribution: BaseDistribution) -> list[Any]:
    """Every value of a discrete distribution, for Optuna's GridSampler."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, (IntDistribution, FloatDistribution)) and distribution.step and not distribution.log:
        count = int(round((distribution.high - distribution.low) / distribution.step)) + 1
        return [distribution.low + i * distribution.step for i in range(count)]
    raise ValueError(f"hydra.sweeper.params.{name}: the grid sampler needs choice(...) or range(...), "
                     f"got {distribution}")


def trial_overrides(params: dict[str, Any], fixed: dict[str, str]) -> list[str]:
    """A trial's parameters (and the fixed values) as Hydra overrides."""
    return [f"{key}={value}" for key, value in {**params, **fixed}.items()]
