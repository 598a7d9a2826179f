"""Typed, frozen configurations: field checking, the task spec, and the model config.

A search samples a plain dict; :meth:`ModelConfig.from_sample` turns it into a frozen
:class:`ModelConfig` (family + typed family args + task) from which
``create_model(config)`` rebuilds the exact model, with or without Ray.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cytotune.registry import close_matches

TASK_KINDS = ("binary", "multiclass", "regression")


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a type annotation and normalise it (lists -> tuples, int -> float).

    Supports ``bool``, ``int``, ``float``, ``str``, ``Any``, ``None``, ``Literal``, unions,
    ``tuple[T, ...]`` and ``dict``.

    Raises:
        TypeError: naming ``where``, the value and the expected type.
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if annotation is None or annotation is type(None):
        if value is None:
            return None
    elif origin is Literal:
        if value in args:
            return value
        raise TypeError(f"{where}: {value!r} is not one of {list(args)}")
    elif origin in (typing.Union, types.UnionType):
        for arm in args:
            try:
                return coerce(value, arm, where)
            except TypeError:
                continue
    elif origin is tuple:
        if isinstance(value, list | tuple):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
            if len(value) == len(args):
                return tuple(
                    coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))
                )
    elif origin is dict or annotation is dict:
        if isinstance(value, Mapping):
            return {str(k): v for k, v in value.items()}
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
    else:
        raise AssertionError(f"unsupported annotation {annotation!r} at {where}")
    raise TypeError(f"{where}: expected {_type_name(annotation)}, got {value!r}")


def _type_name(annotation: Any) -> str:
    """``int | 'auto'`` for ``int | Literal["auto"]``: how a user writes the value."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arm) for arm in args)
    if origin is Literal:
        return " | ".join(repr(arg) for arg in args)
    if annotation is None or annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def check_fields(obj: Any) -> None:
    """Coerce every field of a frozen dataclass instance in place to its annotated type."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = coerce(getattr(obj, f.name), hints[f.name], f"{type(obj).__name__}.{f.name}")
        object.__setattr__(obj, f.name, value)


def to_jsonable(value: Any) -> Any:
    """Dataclasses, tuples and mappings as plain JSON types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    return value


def build_args(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """Instantiate a family-args dataclass, rejecting unknown keys with close matches."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise ValueError(
                f"{where}: unknown argument {key!r}{close_matches(key, names)}; valid: {names}"
            )
    return cls(**values)


@dataclass(frozen=True)
class TaskSpec:
    """What the model predicts.

    Attributes:
        kind: ``binary`` (two logits, softmax cross-entropy), ``multiclass`` (K logits) or
            ``regression`` (``num_outputs`` continuous targets, one head each, MSE).
        num_outputs: logits (classification) or targets (regression).
        target_names: optional class or target names, one per output.
    """

    kind: Literal["binary", "multiclass", "regression"] = "binary"
    num_outputs: int = 2
    target_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(
                f"task kind {self.kind!r} unknown{close_matches(self.kind, TASK_KINDS)}; use one of {TASK_KINDS}"
            )
        check_fields(self)
        if self.kind == "binary" and self.num_outputs != 2:
            raise ValueError(
                f"a binary task has num_outputs=2 (two logits), got {self.num_outputs}"
            )
        if self.kind == "multiclass" and self.num_outputs < 2:
            raise ValueError(f"a multiclass task needs num_outputs >= 2, got {self.num_outputs}")
        if self.num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {self.num_outputs}")
        if self.target_names and len(self.target_names) != self.num_outputs:
            raise ValueError(
                f"target_names has {len(self.target_names)} names for {self.num_outputs} outputs"
            )

    @property
    def is_classification(self) -> bool:
        return self.kind != "regression"

    @classmethod
    def parse(
        cls, task: TaskSpec | str | Mapping[str, Any], num_outputs: int | None = None
    ) -> TaskSpec:
        """A TaskSpec from a spec, a kind name (with optional ``num_outputs``) or a dict."""
        if isinstance(task, TaskSpec):
            return task
        if isinstance(task, str):
            if num_outputs is None:
                num_outputs = 1 if task == "regression" else 2
            return cls(kind=task, num_outputs=num_outputs)  # type: ignore[arg-type]
        if isinstance(task, Mapping):
            return cls(**task)
        raise TypeError(f"task must be a TaskSpec, a kind name or a dict, got {task!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model: family, input channels, task and family args.

    Attributes:
        family: a registered family name (``list_models()``).
        in_chans: number of input channels N (channels are never coerced to RGB).
        task: the task spec.
        args: the family's frozen args dataclass (see ``family_args(family)``).
        plugin: for a family from outside cytotune, the module name or ``.py`` path that
            registers it (set from the registry; imported when the family is not registered).
    """

    family: str
    in_chans: int = 3
    task: TaskSpec = field(default_factory=TaskSpec)
    args: Any = None
    plugin: str | None = None

    def __post_init__(self) -> None:
        from .models.plugins import import_plugins
        from .models.registry import family_args, get_family, is_registered

        if self.plugin and not is_registered(self.family):
            import_plugins([self.plugin])
        args_cls = family_args(self.family)
        if self.plugin is None:
            object.__setattr__(self, "plugin", get_family(self.family).plugin)
        object.__setattr__(self, "task", TaskSpec.parse(self.task))
        check_fields(self)
        if self.in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {self.in_chans}")
        if self.args is None:
            object.__setattr__(self, "args", args_cls())
        elif isinstance(self.args, Mapping):
            object.__setattr__(self, "args", build_args(args_cls, self.args, self.family))
        elif not isinstance(self.args, args_cls):
            raise TypeError(
                f"args for {self.family!r} must be {args_cls.__name__}, got {type(self.args).__name__}"
            )

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with top-level fields (``in_chans``, ``task``) or family args replaced."""
        top = {k: changes.pop(k) for k in ("family", "in_chans", "task", "args") if k in changes}
        if "family" in top:
            top["plugin"] = None  # the new family's own, from the registry
        if "task" in top:
            top["task"] = TaskSpec.parse(top["task"])
        if changes:
            args = dataclasses.asdict(self.args) | changes
            top["args"] = build_args(type(self.args), args, self.family)
        return dataclasses.replace(self, **top)

    def to_dict(self) -> dict[str, Any]:
        data = to_jsonable(self)
        if data["plugin"] is None:  # cytotune's own families: no key
            del data["plugin"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        extra = set(data) - {"family", "in_chans", "task", "args", "plugin"}
        if extra:
            raise ValueError(
                f"unknown model config keys {sorted(extra)}; expected family, in_chans, task, "
                "args (and plugin)"
            )
        if "family" not in data:
            raise ValueError("a model config needs a 'family'")
        task = TaskSpec.parse(data.get("task", "binary"))
        args = dict(data.get("args") or {})
        return cls(data["family"], data.get("in_chans", 3), task, args, data.get("plugin"))

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_sample(
        cls,
        sample: Mapping[str, Any],
        *,
        in_chans: int,
        task: TaskSpec | str | Mapping[str, Any] = "binary",
        num_outputs: int | None = None,
    ) -> ModelConfig:
        """A config from a search-space sample ``{"family": f, f: {...}, "train": {...}}``.

        Args:
            sample: a dict from ``SearchSpace.suggest``/``default`` or a Ray Tune config.
            in_chans: channels of the dataset.
            task: task spec or kind name; ``num_outputs`` completes a kind name.
        """
        if "family" not in sample:
            raise ValueError(f"sample has no 'family' key: {sorted(sample)}")
        family = sample["family"]
        return cls(
            family, in_chans, TaskSpec.parse(task, num_outputs), dict(sample.get(family) or {})
        )
