"""The finder registry: one interface for every way of finding cells in a field.

A finder turns one 2-D field (the channel that holds nuclei or cells) into an instance label
image: 0 is background, 1..N one cell each, no overlaps. Register new finders with
``@register_finder("name")``; build them with ``create_finder(name, **kwargs)``.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable

import numpy as np

# Modules that register a finder when imported (kept lazy: they import scikit-image or torch).
_BUILTIN = {"classical": "cytotune.engine.crop.classical", "learned": "cytotune.engine.crop.learned"}
_FINDERS: dict[str, type[Finder]] = {}


class Finder:
    """Base class: subclasses implement :meth:`find` (and may batch in :meth:`find_many`)."""

    name: str = ""

    def find(self, image: np.ndarray) -> np.ndarray:
        """Instance labels of one field.

        Args:
            image: (H, W) array of any numeric dtype (one channel of the field).

        Returns:
            (H, W) int32 label image: 0 background, 1..N one cell each.
        """
        raise NotImplementedError

    def find_many(self, images: Iterable[np.ndarray]) -> list[np.ndarray]:
        """Label images of several fields (a learned finder batches them on its device)."""
        return [self.find(image) for image in images]

    def describe(self) -> dict:
        """Settings to record in the dataset's provenance."""
        return {"finder": self.name}


def register_finder(name: str):
    """Class decorator adding a :class:`Finder` subclass to the registry under ``name``."""

    def decorator(cls: type[Finder]) -> type[Finder]:
        if name in _FINDERS and _FINDERS[name] is not cls:
            raise ValueError(f"finder {name!r} is already registered")
        cls.name = name
        _FINDERS[name] = cls
        return cls

    return decorator


def _load_builtin(name: str) -> None:
    import importlib

    importlib.import_module(_BUILTIN[name])


def list_finders(pattern: str = "*") -> list[str]:
    """Names of the registered finders matching a shell-style ``pattern``."""
    names = set(_FINDERS) | set(_BUILTIN)
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def create_finder(name: str, **kwargs) -> Finder:
    """Build a registered finder; unknown names raise ValueError listing close matches."""
    if name not in _FINDERS and name in _BUILTIN:
        _load_builtin(name)
    if name not in _FINDERS:
        close = difflib.get_close_matches(str(name), list_finders(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown finder {name!r}{hint}; available: {list_finders()}")
    return _FINDERS[name](**kwargs)


def normalise(image: np.ndarray, low: float = 0.5, high: float = 99.8) -> np.ndarray:
    """Float32 copy of ``image`` stretched so its ``low``/``high`` percentiles map to 0/1."""
    x = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(x, [low, high])
    if hi <= lo:
        return np.zeros_like(x)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32, copy=False)
