"""Plate / well / field layout and plate batch effects, as pure functions of the cell index.

Cell ``i`` belongs to class ``i % K`` and to that class's well slot ``(i // K) % (plates *
wells_per_class)``, so classes stay balanced and a longer run only appends cells. Wells are
class-pure: the row letter is the class, the column the slot. Identifiers are globally unique
(``P1``, ``P1-A03``, ``P1-A03-F2``) so grouping by any one column never merges two plates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tasks import SynthOptions

ROWS = "ABCDEFGHIJKLMNOP"
# Stream tags keep plate/well/confound generators apart from the per-cell ones.
_PLATE_TAG, _WELL_TAG, _CONFOUND_TAG = 1 << 62, 1 << 61, 1 << 60


def generator(tag: int, seed: int) -> np.random.Generator:
    """Counter-based generator for one (tag, seed) pair; cheap to create, independent streams."""
    return np.random.Generator(np.random.Philox(key=[int(tag), int(seed)]))


@dataclass(frozen=True)
class Layout:
    """Where each cell of a batch sits (arrays of length N)."""

    class_index: np.ndarray  # (N,) int
    plate_index: np.ndarray  # (N,) int
    well_gain: np.ndarray  # (N,) float, small per-well intensity variation
    plates: list[str]
    wells: list[str]
    fields: list[str]


def home_plates(n_plates: int, n_classes: int) -> list[list[int]]:
    """Plates reserved for each class when confounded: plate p belongs to class p % K."""
    return [[p for p in range(n_plates) if p % n_classes == k] for k in range(n_classes)]


def _relocated(k: int, n_slots: int, confound: float, seed: int) -> np.ndarray:
    """Which well slots of class k move to the class's home plates (a fixed share, seeded)."""
    order = generator(_CONFOUND_TAG + k, seed).permutation(n_slots)
    return order < int(round(confound * n_slots))


def layout(indices: np.ndarray, n_classes: int, options: SynthOptions, seed: int) -> Layout:
    """Plate, well and field of the cells with global ``indices``."""
    if n_classes > len(ROWS):
        raise ValueError(f"at most {len(ROWS)} classes fit the plate layout, got {n_classes}")
    n_slots = options.plates * options.wells_per_class
    k = indices % n_classes
    j = indices // n_classes
    slot = j % n_slots
    field = (j // n_slots) % options.fields_per_well
    plate = slot % options.plates
    if options.confound > 0:
        homes = home_plates(options.plates, n_classes)
        moved = np.stack([_relocated(c, n_slots, options.confound, seed) for c in range(n_classes)])
        home = np.array(
            [[homes[c][s % len(homes[c])] for s in range(n_slots)] for c in range(n_classes)]
        )
        plate = np.where(moved[k, slot], home[k, slot], plate)
    well_gain = np.exp(0.04 * generator(_WELL_TAG, seed).standard_normal((n_classes, n_slots)))[
        k, slot
    ]
    plates = [f"P{p + 1}" for p in plate]
    wells = [f"{pl}-{ROWS[c]}{s + 1:02d}" for pl, c, s in zip(plates, k, slot)]
    fields_ = [f"{w}-F{f + 1}" for w, f in zip(wells, field)]
    return Layout(k.astype(np.int64), plate.astype(np.int64), well_gain, plates, wells, fields_)


@dataclass(frozen=True)
class PlateEffects:
    """Per-plate camera response: ADU = gain * photons + offset (+ noise)."""

    gain: np.ndarray  # (P, C) ADU per photon
    offset: np.ndarray  # (P,) ADU
    read_noise: np.ndarray  # (P,) ADU, Gaussian camera noise


def plate_effects(n_plates: int, n_channels: int, seed: int) -> PlateEffects:
    """Batch effects spread over the plates (golden-ratio spacing, so no two plates match)."""
    rng = generator(_PLATE_TAG, seed)
    u0, u1 = rng.random(2)
    p = np.arange(n_plates)
    level = (u0 + 0.618034 * p) % 1.0
    gain = (0.7 + 0.7 * level)[:, None] * np.exp(0.08 * rng.standard_normal((n_plates, n_channels)))
    offset = 100.0 + 250.0 * ((u1 + 0.381966 * p) % 1.0)
    read_noise = 3.0 + 4.0 * rng.random(n_plates)
    return PlateEffects(gain, offset, read_noise)
