"""Explainer registry and the one factory (timm ``models/_registry.py`` style)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cytotune.registry import Registry

if TYPE_CHECKING:
    from torch import nn


def _builtin_modules() -> dict[str, str]:
    """Built-in method -> the module of this package that registers it, read from the sources
    (``@register_explainer("name")``) and imported on first use: listing the methods imports no
    torch (the dashboard, ``--help``), and a new method is one module here, listed by itself."""
    found: dict[str, str] = {}
    for path in sorted(Path(__file__).parent.glob("*.py")):
        for name in _DECORATOR.findall(path.read_text(encoding="utf-8")):
            found[name] = f"{__package__}.{path.stem}"
    return found


_DECORATOR = re.compile(r"^@register_explainer\(\s*[\"']([^\"']+)[\"']\s*\)", re.M)
EXPLAINERS: Registry[type] = Registry("explainer", lazy=_builtin_modules(), name_attr="name")


def register_explainer(name: str) -> Callable[[type], type]:
    """Class decorator registering an attribution method under ``name``.

    The class is built by :func:`create_explainer` through its ``create(model, layer, **kw)``
    classmethod (``Explainer.create`` calls the constructor).

    Args:
        name: the method name used in configs and on the command line, e.g. ``"gradcam"``
            (set as the class's ``name``).
    """
    return EXPLAINERS.register(name)


def get_explainer_class(name: str) -> type:
    """The class registered as ``name``; unknown names raise ValueError with close matches."""
    return EXPLAINERS.get(name)


def list_explainers(pattern: str = "*") -> list[str]:
    """Registered explainer names matching a glob pattern, e.g. ``list_explainers("*cam*")``."""
    return EXPLAINERS.list(pattern)


def create_explainer(name: str, model: nn.Module, layer: Any = None, **kwargs: Any) -> Any:
    """Build a registered explainer.

    Args:
        name: registered name (:func:`list_explainers`).
        model: the model to explain (a ``CytoModel`` or any module returning (B, K) outputs).
        layer: CAM layer(s): a module path, a module, or a list of them; None = the model's
            ``target_layer``. Must be None for input-attribution methods.
        **kwargs: method options (the class's ``defaults``); ``"smoothgrad"`` also takes
            ``base`` (a registered name or an explainer, default ``"saliency"``).

    Returns:
        The explainer; call ``.attribute(x, target=None, **options)``.

    Example:
        >>> cam = create_explainer("gradcam++", model, layer="backbone.layer3", normalize=True)
        >>> maps = cam.attribute(x)  # (B, 1, H, W)
    """
    return get_explainer_class(name).create(model, layer, **kwargs)


def method_passes(name: str, options: dict[str, Any]) -> int:
    """Passes per image of method ``name`` with ``options`` (its class's ``passes``; 1 for a
    class without one, or for options it cannot read, which the method reports when it runs):
    how the explain job ranks the cost of its methods' work."""
    passes = getattr(get_explainer_class(name), "passes", None)
    try:
        return max(1, int(passes(dict(options)))) if passes is not None else 1
    except (ValueError, TypeError, KeyError):  # bad options: the method itself says what is wrong
        return 1
