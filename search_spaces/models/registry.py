"""Family registry and the one model factory (timm ``models/_registry.py`` style)."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from cytotune.registry import Registry

from ..config import ModelConfig, TaskSpec
from .tasks import capabilities_of


@dataclass(frozen=True)
class FamilyEntry:
    """A registered family: its model class, its typed args dataclass and, for a family from
    outside cytotune, the plugin (module name or ``.py`` path) that registers it again."""

    name: str
    model_cls: type[nn.Module]
    args_cls: type
    doc: str
    plugin: str | None = None


FAMILIES: Registry[FamilyEntry] = Registry(
    "model family",
    hint=" (a family defined in your own module must be imported first: list it under plugins: "
    "in the study file)",
    identity=lambda entry: entry.model_cls,
)
_TOP_LEVEL = ("in_chans", "task", "num_outputs", "target_names")
# The plugins being imported now, innermost last (see ``plugins.import_plugins``).
LOADING_PLUGINS: list[str] = []


def register_family(name: str, *, args: type) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator registering a model family.

    The class is built as ``model_cls(args, in_chans, task)`` where ``args`` is an instance of
    the frozen dataclass ``args``. What the class declares in ``capabilities`` is checked here:
    each flag's hooks must exist (see :class:`~cytotune.search_spaces.models.tasks.Capabilities`).

    Args:
        name: family name used in configs and search spaces.
        args: the family's frozen args dataclass (every field has a default).
    """
    if not dataclasses.is_dataclass(args):
        raise TypeError(f"family {name!r}: args must be a dataclass, got {args!r}")

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        check_capabilities(name, cls)
        doc = (cls.__doc__ or "").strip().splitlines()
        FAMILIES.add(name, FamilyEntry(name, cls, args, doc[0] if doc else "", _plugin_of(cls)))
        cls.family_name = name
        return cls

    return decorator


def _plugin_of(cls: type) -> str | None:
    """What imports ``cls``'s family again in another process: the plugin being imported, else
    its module when that is neither cytotune's own nor a script's ``__main__``."""
    if LOADING_PLUGINS:
        return LOADING_PLUGINS[-1]
    module = cls.__module__
    return None if module.split(".")[0] in ("cytotune", "__main__") else module


def is_registered(name: str) -> bool:
    return name in FAMILIES


def unregister_family(name: str) -> None:
    """Remove a family (a plugin's, to import it again); unknown names raise ValueError."""
    FAMILIES.remove(name)


def check_capabilities(name: str, cls: type[nn.Module]) -> None:
    """Raise TypeError when ``cls`` declares a capability without its hooks, or takes a mask
    it does not declare (the engine would never pass it)."""
    caps = capabilities_of(cls)
    missing = [
        f"{flag} needs {attr!r}"
        for flag, attrs in caps.hooks().items()
        for attr in attrs
        if not hasattr(cls, attr)
    ]
    takes = "mask" in inspect.signature(cls.forward).parameters
    if caps.takes_mask and not takes:
        missing.append("takes_mask needs forward(x, mask=None)")
    if takes and not caps.takes_mask:
        missing.append("forward takes a mask: declare capabilities = Capabilities(takes_mask=True)")
    if missing:
        raise TypeError(f"family {name!r} ({cls.__name__}): " + "; ".join(missing))


def get_family(name: str) -> FamilyEntry:
    """The registry entry of ``name``; unknown names raise ValueError with close matches."""
    return FAMILIES.get(name)


def family_args(name: str) -> type:
    """The args dataclass of family ``name``."""
    return get_family(name).args_cls


def list_models(pattern: str = "*") -> list[str]:
    """Registered family names matching a glob pattern, e.g. ``list_models("proto*")``."""
    return FAMILIES.list(pattern)


def create_model(config_or_name: ModelConfig | Mapping[str, Any] | str, **kwargs: Any) -> nn.Module:
    """Build a model from a config, a config dict, or a family name plus keyword args.

    Args:
        config_or_name: a :class:`ModelConfig`, its ``to_dict()`` form, or a family name.
        **kwargs: ``in_chans``, ``task`` (kind name, dict or TaskSpec), ``num_outputs``,
            ``target_names`` and family args; with a config they override its values.

    Returns:
        The model, with ``model.config`` set to the exact config that rebuilds it.

    Example:
        >>> m = create_model("small_cnn", in_chans=4, task="multiclass", num_outputs=3, filters=16)
        >>> m2 = create_model(m.config)  # same architecture
    """
    if isinstance(config_or_name, str):
        config = ModelConfig(get_family(config_or_name).name)
    elif isinstance(config_or_name, ModelConfig):
        config = config_or_name
    elif isinstance(config_or_name, Mapping):
        config = ModelConfig.from_dict(config_or_name)
    else:
        raise TypeError(
            f"create_model takes a ModelConfig, dict or family name, got {config_or_name!r}"
        )
    if kwargs:
        config = _apply_overrides(config, kwargs)
    entry = get_family(config.family)
    model = entry.model_cls(config.args, config.in_chans, config.task)
    model.config = config
    return model


def _apply_overrides(config: ModelConfig, kwargs: dict[str, Any]) -> ModelConfig:
    top = {k: kwargs.pop(k) for k in _TOP_LEVEL if k in kwargs}
    if {"task", "num_outputs", "target_names"} & set(top):
        task = top.pop("task", config.task.kind if "num_outputs" in top else config.task)
        spec = TaskSpec.parse(task, top.pop("num_outputs", None))
        if "target_names" in top:
            spec = dataclasses.replace(spec, target_names=tuple(top.pop("target_names")))
        top["task"] = spec
    return config.replace(**top, **kwargs)
