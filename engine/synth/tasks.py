"""Task registry for synthetic cells: options, per-cell random tapes and the task interface.

A task turns a batch of per-cell random numbers into clean fluorescence signal, a cell mask and
an evidence mask. Layout (plates, wells, fields), batch effects and camera noise are shared and
live in ``layout.py`` and ``generate.py``. Register new tasks with ``@register_task("name")``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

from cytotune.registry import Registry


def check_range(name: str, value, lo, hi, *, integer: bool = False, lo_open: bool = False):
    """Validate one option value; returns it coerced to int/float or raises ValueError."""
    kind = "an integer" if integer else "a number"
    bad_type = isinstance(value, bool) or not isinstance(
        value, (int, float, np.integer, np.floating)
    )
    if integer and not bad_type and not float(value).is_integer():
        bad_type = True
    if bad_type:
        raise ValueError(f"option {name}={value!r} must be {kind} in {_interval(lo, hi, lo_open)}")
    value = int(value) if integer else float(value)
    if not (lo < value if lo_open else lo <= value) or value > hi:
        raise ValueError(
            f"option {name}={value!r} is outside the valid range {_interval(lo, hi, lo_open)}"
        )
    return value


def _interval(lo, hi, lo_open: bool) -> str:
    return f"{'(' if lo_open else '['}{lo}, {hi}]"


# option -> (low, high, integer, low bound excluded)
_SHARED_RANGES = {
    "plates": (1, 26, True, False),
    "wells_per_class": (1, 99, True, False),
    "fields_per_well": (1, 999, True, False),
    "weak_fraction": (0, 1, False, True),
    "confound": (0, 1, False, False),
}


@dataclass(frozen=True)
class SynthOptions:
    """Options shared by every task (plate layout, weak labels, plate/class confound).

    Attributes:
        plates: number of plates; each has its own intensity gain and background offset.
        wells_per_class: wells of each class on each plate (wells hold one class each).
        fields_per_well: imaged fields per well.
        weak_fraction: in (0, 1]; fraction of cells in non-reference wells that really show
            their well's phenotype (the rest look like the reference class).
        confound: in [0, 1]; share of wells moved onto plates reserved for their class (at 1,
            every plate holds a single class, so plate batch effects predict the class).
    """

    plates: int = 2
    wells_per_class: int = 4
    fields_per_well: int = 4
    weak_fraction: float = 1.0
    confound: float = 0.0

    def __post_init__(self) -> None:
        for name, (lo, hi, integer, lo_open) in _SHARED_RANGES.items():
            value = check_range(name, getattr(self, name), lo, hi, integer=integer, lo_open=lo_open)
            self._set(name, value)

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)


class Tape:
    """Fixed-length per-cell random numbers, handed out in order: ``tape.uniform(3)`` -> (N, 3).

    Each cell's tape comes from its own generator seeded by (seed, cell index), so a cell looks
    the same whatever batch it is drawn in.
    """

    def __init__(self, uniforms: np.ndarray, normals: np.ndarray) -> None:
        self._u, self._z = uniforms, normals
        self._iu = self._iz = 0

    def uniform(self, *shape: int) -> np.ndarray:
        k = int(np.prod(shape))
        assert self._iu + k <= self._u.shape[1], "task draws more uniforms than it declared"
        out = self._u[:, self._iu : self._iu + k].reshape(-1, *shape)
        self._iu += k
        return out

    def normal(self, *shape: int) -> np.ndarray:
        k = int(np.prod(shape))
        assert self._iz + k <= self._z.shape[1], "task draws more normals than it declared"
        out = self._z[:, self._iz : self._iz + k].reshape(-1, *shape)
        self._iz += k
        return out


@dataclass
class Drawing:
    """Clean signal of a batch, before illumination, batch effects and camera noise."""

    signal: np.ndarray  # (N, C, H, W) float32, about 0..1 (1 = a bright structure)
    mask: np.ndarray  # (N, H, W) bool, inside the cell
    evidence: np.ndarray  # (N, H, W) bool, where the class-specific signal was drawn


class SynthTask:
    """Base class: subclasses set the class attributes and implement :meth:`draw`.

    ``classes[0]`` is the reference class (untreated / normal): weakly labelled cells fall back
    to it. ``peaks`` are the channel brightnesses in photons for a signal of 1.
    """

    name: ClassVar[str] = ""
    channel_names: ClassVar[tuple[str, ...]] = ()
    classes: ClassVar[tuple[str, ...]] = ()
    peaks: ClassVar[tuple[float, ...]] = ()
    options_class: ClassVar[type[SynthOptions]] = SynthOptions
    n_uniform: ClassVar[int] = 0
    n_normal: ClassVar[int] = 0

    def make_options(self, **options) -> SynthOptions:
        """Build and validate this task's options; unknown names raise ValueError."""
        valid = [f.name for f in fields(self.options_class)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for task {self.name!r}; valid: {valid}")
        opts = self.options_class(**options)
        if opts.confound > 0 and opts.plates < len(self.classes):
            raise ValueError(
                f"option confound={opts.confound} needs plates >= {len(self.classes)} (one plate "
                f"per class of task {self.name!r}), got plates={opts.plates}"
            )
        return opts

    def draw(self, shown: np.ndarray, tape: Tape, size: int, options: SynthOptions) -> Drawing:
        """Render a batch.

        Args:
            shown: (N,) index of the class each cell looks like (0 = reference).
            tape: per-cell random numbers (``n_uniform`` uniforms, ``n_normal`` normals).
            size: crop side in pixels.
            options: this task's validated options.
        """
        raise NotImplementedError


TASKS: Registry[type[SynthTask]] = Registry("synthetic task", name_attr="name")


def register_task(name: str):
    """Class decorator adding a :class:`SynthTask` subclass to the registry under ``name`` (set
    as the class's ``name``)."""
    return TASKS.register(name)


def list_tasks(pattern: str = "*") -> list[str]:
    """Names of the registered tasks matching a shell-style ``pattern``."""
    return TASKS.list(pattern)


def get_task(name: str) -> SynthTask:
    """Instantiate a registered task; unknown names raise ValueError with close matches."""
    return TASKS.get(name)()
