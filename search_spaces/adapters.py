"""The one boundary between :class:`SearchSpace` and the samplers (Optuna, Ray Tune).

Optuna (define-by-run, handles the conditional family choice)::

    study = optuna.create_study()
    study.enqueue_trial(space.default_params())          # default configuration first
    study.optimize(lambda t: objective(space.suggest(t)), n_trials=20)

Ray Tune (conditional spaces go through Optuna define-by-run)::

    searcher = OptunaSearch(space=space.define_by_run, metric="acc", mode="max",
                            points_to_evaluate=[space.default_params()])
    tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=searcher))

Either way the trial's config is the nested sample ``{"family": f, f: {...}, "train": {...}}``.
Optuna categorical choices must be None/bool/int/float/str; other choices (lists, mappings)
are passed to Optuna as their JSON text and decoded here.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from .space import SEP, CategoricalParam, FixedParam, FloatParam, IntParam, Param, SpaceError

if TYPE_CHECKING:
    from .space import SearchSpace

_SCALARS = (type(None), bool, int, float, str)


def _encode(choice: Any) -> Any:
    return choice if isinstance(choice, _SCALARS) else json.dumps(choice)


def _decode(p: CategoricalParam, value: Any) -> Any:
    for choice in p.choices:
        if _encode(choice) == value and type(_encode(choice)) is type(value):
            return choice
    raise AssertionError(f"{value!r} is not an encoded choice of {p}")


def _groups(space: SearchSpace, family: str) -> list[tuple[str, dict[str, Param]]]:
    return [(family, dict(space.families[family])), ("train", dict(space.train))]


def suggest_param(trial: Any, name: str, p: Param) -> Any:
    """Sample one parameter with an Optuna trial (fixed values are not sent to Optuna)."""
    if isinstance(p, FixedParam):
        return p.value
    if isinstance(p, FloatParam):
        return trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
    if isinstance(p, IntParam):
        return trial.suggest_int(name, p.low, p.high, step=p.step, log=p.log)
    return _decode(p, trial.suggest_categorical(name, [_encode(c) for c in p.choices]))


def suggest(space: SearchSpace, trial: Any) -> dict[str, Any]:
    """Nested sample from an Optuna trial; only the chosen family's parameters are suggested."""
    families = list(space.families)
    family = trial.suggest_categorical("family", families) if len(families) > 1 else families[0]
    values = {}
    for group, params in _groups(space, family):
        for key, p in params.items():
            values[f"{group}{SEP}{key}"] = suggest_param(trial, f"{group}{SEP}{key}", p)
    return space.sample_for(family, values)


def define_by_run(space: SearchSpace, trial: Any) -> dict[str, Any]:
    """Flat ``{"family": f, "f/key": v, "train/key": v}`` for Ray's OptunaSearch, which
    unflattens on "/" back into the nested sample."""
    sample = suggest(space, trial)
    flat: dict[str, Any] = {"family": sample["family"]}
    for group in (sample["family"], "train"):
        flat |= {f"{group}{SEP}{k}": v for k, v in sample.get(group, {}).items()}
    return flat


def default_params(space: SearchSpace, family: str | None = None) -> dict[str, Any]:
    """Flat Optuna parameter values of the default configuration of ``family`` (default: the
    space's default family; fixed values omitted)."""
    family = family or space.default_family
    out: dict[str, Any] = {"family": family} if space.is_conditional else {}
    for group, params in _groups(space, family):
        for key, p in params.items():
            if isinstance(p, CategoricalParam):
                out[f"{group}{SEP}{key}"] = _encode(p.default)
            elif not isinstance(p, FixedParam):
                out[f"{group}{SEP}{key}"] = p.default
    return out


def to_optuna_distributions(space: SearchSpace) -> dict[str, Any]:
    """Flat ``{name: optuna distribution}`` of a non-conditional space (fixed values omitted)."""
    import optuna.distributions as od

    _require_flat(space, "to_optuna_distributions")
    out = {}
    for group, params in _groups(space, space.default_family):
        for key, p in params.items():
            name = f"{group}{SEP}{key}"
            if isinstance(p, FloatParam):
                out[name] = od.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
            elif isinstance(p, IntParam):
                out[name] = od.IntDistribution(p.low, p.high, log=p.log, step=p.step)
            elif isinstance(p, CategoricalParam):
                out[name] = od.CategoricalDistribution([_encode(c) for c in p.choices])
    return out


def to_tune(space: SearchSpace) -> dict[str, Any]:
    """Nested Ray Tune param space of a non-conditional (single-family) space.

    Raises:
        SpaceError: for conditional spaces, which Ray's domains cannot express for
            searchers; use ``OptunaSearch(space=space.define_by_run)`` instead.
    """
    from ray import tune

    _require_flat(space, "to_tune")

    def domain(p: Param) -> Any:
        if isinstance(p, FixedParam):
            return p.value
        if isinstance(p, CategoricalParam):
            return tune.choice(list(p.choices))
        # Ray rounds stepped values to multiples of the step, Optuna to low + k * step.
        aligned = p.step is not None and math.isclose(p.low / p.step, round(p.low / p.step))
        if isinstance(p, FloatParam):
            if p.step is not None:
                return tune.quniform(p.low, p.high, p.step) if aligned else tune.choice(_grid(p))
            return tune.loguniform(p.low, p.high) if p.log else tune.uniform(p.low, p.high)
        if p.log:
            return tune.lograndint(p.low, p.high + 1)  # upper bound exclusive
        if p.step != 1:
            return tune.qrandint(p.low, p.high, p.step) if aligned else tune.choice(_grid(p))
        return tune.randint(p.low, p.high + 1)  # upper bound exclusive

    family = space.default_family
    out: dict[str, Any] = {"family": family}
    for group, params in _groups(space, family):
        if params or group == family:
            out[group] = {k: domain(p) for k, p in params.items()}
    return out


def _grid(p: FloatParam | IntParam) -> list[float | int]:
    n = int(math.floor((p.high - p.low) / p.step + 1e-9))
    return [p.low + k * p.step for k in range(n + 1)]


def _require_flat(space: SearchSpace, what: str) -> None:
    if space.is_conditional:
        raise SpaceError(
            f"space {space.name!r} is conditional (families {list(space.families)}): {what} cannot "
            "express it; use OptunaSearch(space=space.define_by_run) or space.suggest(trial)"
        )
