"""The finder registry: one interface for every way of finding cells in a field.

A finder turns one 2-D field (the channel that holds nuclei or cells) into an instance label
image: 0 is background, 1..N one cell each, no overlaps. Register new finders with
``@register_finder("name")``; build them with ``create_finder(name, **kwargs)``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from cytotune.registry import Registry

# Built-in finders register when first asked for (their modules import scikit-image or torch).
FINDERS: Registry[type[Finder]] = Registry(
    "finder",
    lazy={
        "classical": "cytotune.engine.crop.classical",
        "learned": "cytotune.engine.crop.learned",
        "seed": "cytotune.engine.crop.seed",
    },
    name_attr="name",
)


class Finder:
    """Base class: subclasses implement :meth:`find` (and may batch in :meth:`find_many`)."""

    name: str = ""
    # May run in worker processes, one copy each (`cytotune crop --workers`); False keeps it in
    # the calling process (a model that lives on one device and batches there).
    processes: bool = True

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
    """Class decorator adding a :class:`Finder` subclass to the registry under ``name`` (set as
    the class's ``name``)."""
    return FINDERS.register(name)


def list_finders(pattern: str = "*") -> list[str]:
    """Names of the registered finders matching a shell-style ``pattern``."""
    return FINDERS.list(pattern)


def create_finder(name: str, **kwargs) -> Finder:
    """Build a registered finder; unknown names raise ValueError listing close matches."""
    return FINDERS.get(name)(**kwargs)


def normalise(image: np.ndarray, low: float = 0.5, high: float = 99.8) -> np.ndarray:
    """Float32 copy of ``image`` stretched so its ``low``/``high`` percentiles map to 0/1."""
    x = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(x, [low, high])
    if hi <= lo:
        return np.zeros_like(x)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32, copy=False)
