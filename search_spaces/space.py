"""Search spaces as data: typed parameter distributions, conditional per family, YAML/JSON.

A space file looks like::

    name: microtubule
    description: small-CNN search of the microtubule paper
    default_family: small_cnn          # optional: first family otherwise
    families:                          # a family's parameters exist only when it is chosen
      small_cnn:
        conv_layers: {type: int, low: 1, high: 5, default: 3}
        dropout: {type: float, low: 0.0, high: 0.5, step: 0.05, default: 0.25}
        l2: {type: float, low: 1.0e-6, high: 1.0e-2, log: true, default: 1.0e-4}
        pool: {type: categorical, choices: [true, false], default: true}
        mlp: [1024, 512]               # a plain value is fixed
    train:                             # unconditional trainer parameters
      lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true, default: 1.0e-3}

A sample is nested: ``{"family": f, f: {...}, "train": {...}}``; the flat parameter names
(``"family"``, ``"small_cnn/dropout"``, ``"train/lr"``) are what Optuna and Ray Tune see.
Mapping to Optuna and Ray Tune lives in :mod:`cytotune.search_spaces.adapters` only.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import close_matches, coerce
from .models.registry import family_args, get_family

SEP = "/"
_TOP_KEYS = ("name", "description", "default_family", "families", "train")


class SpaceError(ValueError):
    """An invalid search space; the message names the key path and the bad value."""


@dataclass(frozen=True)
class FloatParam:
    """Uniform (or log-uniform) float in [low, high], optionally on a ``step`` grid."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    default: float | None = None


@dataclass(frozen=True)
class IntParam:
    """Integer in [low, high] (inclusive), optionally log-scaled or on a ``step`` grid."""

    low: int
    high: int
    log: bool = False
    step: int = 1
    default: int | None = None


@dataclass(frozen=True)
class CategoricalParam:
    """One of ``choices`` (any JSON values, e.g. ``[1024, 512]`` for a width list); without a
    ``default`` the first choice is the default."""

    choices: tuple[Any, ...]
    default: Any = None


@dataclass(frozen=True)
class FixedParam:
    """A constant value; never sampled."""

    value: Any


Param = FloatParam | IntParam | CategoricalParam | FixedParam
_PARAM_TYPES: dict[str, type] = {
    "float": FloatParam,
    "int": IntParam,
    "categorical": CategoricalParam,
    "fixed": FixedParam,
}


def parse_param(spec: Any, where: str) -> Param:
    """One parameter from its YAML form, validated; a non-mapping value is fixed."""
    if not isinstance(spec, Mapping):
        return FixedParam(spec)
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in _PARAM_TYPES:
        hint = close_matches(str(kind), _PARAM_TYPES) if kind else " (missing)"
        raise SpaceError(
            f"{where}: type {kind!r}{hint}; use one of {list(_PARAM_TYPES)} (a constant mapping: {{type: fixed, value: {{...}}}})"
        )
    cls = _PARAM_TYPES[kind]
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
    for key in spec:
        if key not in names:
            raise SpaceError(
                f"{where}: unknown key {key!r}{close_matches(key, names)} for a {kind} parameter; valid: {names}"
            )
    for key in required:
        if key not in spec:
            raise SpaceError(f"{where}: a {kind} parameter needs {key!r}")
    values = {}
    for key, value in spec.items():
        if key in ("default", "value"):
            values[key] = value
            continue
        try:
            values[key] = coerce(value, hints[key], f"{where}.{key}")
        except TypeError as err:
            raise SpaceError(str(err)) from None
    param = cls(**values)
    _check_param(param, where)
    if getattr(param, "default", 0) is None:
        param = dataclasses.replace(param, default=_implicit_default(param))
    return param


def _check_param(p: Param, where: str) -> None:
    if isinstance(p, FloatParam | IntParam):
        if p.low > p.high:
            raise SpaceError(f"{where}: low ({p.low}) > high ({p.high})")
        if p.log and p.low <= 0:
            raise SpaceError(f"{where}: log scale needs low > 0, got low={p.low}")
        if p.step is not None and p.step <= 0:
            raise SpaceError(f"{where}: step must be > 0, got {p.step}")
        stepped = p.step is not None if isinstance(p, FloatParam) else p.step != 1
        if p.log and stepped:
            raise SpaceError(f"{where}: log scale and step cannot be combined (step={p.step})")
        if p.default is not None:
            ok = isinstance(p.default, int | float) and not isinstance(p.default, bool)
            if isinstance(p, IntParam):
                ok = ok and isinstance(p.default, int)
            if not ok or not p.low <= p.default <= p.high:
                raise SpaceError(
                    f"{where}: default {p.default!r} is not a value in [{p.low}, {p.high}]"
                )
            if p.step and not math.isclose(
                (p.default - p.low) / p.step, round((p.default - p.low) / p.step), abs_tol=1e-9
            ):
                raise SpaceError(
                    f"{where}: default {p.default} is not on the step grid low={p.low}, step={p.step}"
                )
    elif isinstance(p, CategoricalParam):
        if not p.choices:
            raise SpaceError(f"{where}: choices must not be empty")
        if p.default is not None and p.default not in p.choices:
            raise SpaceError(
                f"{where}: default {p.default!r} is not one of the choices {list(p.choices)}"
            )


def _implicit_default(p: Param) -> Any:
    if isinstance(p, CategoricalParam):
        return p.choices[0]
    mid = math.sqrt(p.low * p.high) if p.log else (p.low + p.high) / 2
    step = p.step or (1 if isinstance(p, IntParam) else 0)
    if step:
        mid = p.low + round((mid - p.low) / step) * step
    return int(round(mid)) if isinstance(p, IntParam) else mid


def param_values(p: Param) -> list[Any]:
    """Values that must type-check against the target field: bounds, choices, default."""
    if isinstance(p, FixedParam):
        return [p.value]
    if isinstance(p, CategoricalParam):
        return list(p.choices)
    return [p.low, p.high, p.default]


def param_default(p: Param) -> Any:
    return p.value if isinstance(p, FixedParam) else p.default


def param_to_dict(p: Param) -> Any:
    if isinstance(p, FixedParam):
        return {"type": "fixed", "value": p.value} if isinstance(p.value, Mapping) else p.value
    kind = next(k for k, c in _PARAM_TYPES.items() if isinstance(p, c))
    out = {"type": kind}
    for f in dataclasses.fields(p):
        value = getattr(p, f.name)
        if value != f.default or f.name == "default":
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


@dataclass(frozen=True)
class SearchSpace:
    """A validated, conditional search space over model families and trainer parameters.

    Build with :func:`load_space`, :meth:`from_dict` or :meth:`from_yaml`; sample with
    :meth:`suggest` (Optuna trial), :meth:`define_by_run` (Ray ``OptunaSearch``) or
    :meth:`to_tune` (non-conditional spaces).
    """

    name: str
    families: Mapping[str, Mapping[str, Param]]
    train: Mapping[str, Param] = field(default_factory=dict)
    default_family: str = ""
    description: str = ""

    @property
    def is_conditional(self) -> bool:
        """True when several families are searched (their parameters depend on the choice)."""
        return len(self.families) > 1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "space") -> SearchSpace:
        """Parse and validate; every error names the key path and the bad value."""
        if not isinstance(data, Mapping):
            raise SpaceError(
                f"space {name!r}: expected a mapping at top level, got {type(data).__name__}"
            )
        name = str(data.get("name", name))
        for key in data:
            if key not in _TOP_KEYS:
                raise SpaceError(
                    f"space {name!r}: unknown top-level key {key!r}{close_matches(key, _TOP_KEYS)}; valid: {list(_TOP_KEYS)}"
                )
        fams = data.get("families")
        if not isinstance(fams, Mapping) or not fams:
            raise SpaceError(
                f"space {name!r}: 'families' must map at least one family name to its parameters"
            )
        families = {}
        for fam, params in fams.items():
            try:
                get_family(fam)
            except ValueError as err:
                raise SpaceError(f"space {name!r}: families.{fam}: {err}") from None
            families[fam] = _parse_family(name, fam, params or {})
        train = data.get("train") or {}
        if not isinstance(train, Mapping):
            raise SpaceError(f"space {name!r}: 'train' must be a mapping, got {train!r}")
        train = {k: parse_param(v, f"space {name!r}: train.{k}") for k, v in train.items()}
        default_family = data.get("default_family", next(iter(families)))
        if default_family not in families:
            raise SpaceError(
                f"space {name!r}: default_family {default_family!r} is not in families {list(families)}"
            )
        return cls(name, families, train, default_family, str(data.get("description", "")))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["default_family"] = self.default_family
        out["families"] = {
            f: {k: param_to_dict(p) for k, p in ps.items()} for f, ps in self.families.items()
        }
        if self.train:
            out["train"] = {k: param_to_dict(p) for k, p in self.train.items()}
        return out

    @classmethod
    def from_yaml(cls, text: str, name: str = "space") -> SearchSpace:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise SpaceError(f"space {name!r}: invalid YAML: {err}") from None
        return cls.from_dict(data, name)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_json(cls, text: str, name: str = "space") -> SearchSpace:
        return cls.from_dict(json.loads(text), name)

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    def default(self) -> dict[str, Any]:
        """The space's default configuration (the one a search evaluates first), nested."""
        return self.sample_for(self.default_family, {})

    def default_params(self) -> dict[str, Any]:
        """Default values of the sampled parameters under their flat names, for
        ``study.enqueue_trial`` or ``OptunaSearch(points_to_evaluate=[...])``."""
        from .adapters import default_params

        return default_params(self)

    def family_defaults(self) -> list[dict[str, Any]]:
        """Flat default configurations, one per family (the default family first): the known
        good starting points a search evaluates before sampling."""
        from .adapters import default_params

        order = [self.default_family] + [f for f in self.families if f != self.default_family]
        return [default_params(self, f) for f in order]

    def restricted(self, families: list[str]) -> SearchSpace:
        """This space over ``families`` only (the default family moves to the first kept one
        when it is left out)."""
        if not families:
            raise SpaceError(f"space {self.name!r}: no family left to search")
        kept = {f: self.families[f] for f in families}
        default = self.default_family if self.default_family in kept else families[0]
        return SearchSpace(self.name, kept, self.train, default, self.description)

    def sample_for(self, family: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """A nested sample for ``family`` from flat ``values``, defaults filling the rest."""

        def pick(group: str, params: Mapping[str, Param]) -> dict[str, Any]:
            return {k: values.get(f"{group}{SEP}{k}", param_default(p)) for k, p in params.items()}

        out: dict[str, Any] = {"family": family, family: pick(family, self.families[family])}
        if self.train:
            out["train"] = pick("train", self.train)
        return out

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Sample with an Optuna trial (define-by-run): only the chosen family's parameters."""
        from .adapters import suggest

        return suggest(self, trial)

    def define_by_run(self, trial: Any) -> dict[str, Any]:
        """Flat define-by-run function for ``ray.tune.search.optuna.OptunaSearch(space=...)``."""
        from .adapters import define_by_run

        return define_by_run(self, trial)

    def to_tune(self) -> dict[str, Any]:
        """Ray Tune param space (non-conditional spaces only; see :func:`adapters.to_tune`)."""
        from .adapters import to_tune

        return to_tune(self)


def _parse_family(space: str, family: str, params: Any) -> dict[str, Param]:
    where = f"space {space!r}: families.{family}"
    if not isinstance(params, Mapping):
        raise SpaceError(f"{where}: expected a mapping of parameters, got {params!r}")
    args_cls = family_args(family)
    hints = typing.get_type_hints(args_cls)
    out = {}
    for key, spec in params.items():
        if key not in hints:
            raise SpaceError(
                f"{where}: {key!r} is not a {family} argument{close_matches(key, hints)}; valid: {sorted(hints)}"
            )
        param = parse_param(spec, f"{where}.{key}")
        for value in param_values(param):
            try:
                coerce(value, hints[key], f"{where}.{key}")
            except TypeError as err:
                raise SpaceError(f"{err} (type of {family}.{key} is {hints[key]})") from None
        out[key] = param
    try:
        args_cls(**{k: param_default(p) for k, p in out.items()})
    except (TypeError, ValueError) as err:
        raise SpaceError(f"{where}: the default configuration is invalid: {err}") from None
    return out


def list_spaces() -> list[str]:
    """Names of the search spaces packaged with cytotune."""
    root = importlib.resources.files(__package__)
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A packaged space by name (``load_space("default")``) or a YAML/JSON file path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        if not path.is_file():
            raise SpaceError(f"search space file {path} not found")
        text = path.read_text()
        try:
            if path.suffix == ".json":
                return SearchSpace.from_json(text, path.stem)
            return SearchSpace.from_yaml(text, path.stem)
        except (SpaceError, json.JSONDecodeError) as err:
            raise SpaceError(f"{path}: {err}") from None
    names = list_spaces()
    if str(name_or_path) not in names:
        raise SpaceError(
            f"unknown search space {str(name_or_path)!r}{close_matches(str(name_or_path), names)}; packaged: {names}, or pass a .yaml path"
        )
    text = importlib.resources.files(__package__).joinpath(f"{name_or_path}.yaml").read_text()
    return SearchSpace.from_yaml(text, str(name_or_path))
