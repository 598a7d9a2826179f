"""Task ``microtubule``: microtubule networks after a drug at no, low or high dose (tubulin).

Untreated cells have a radial array of fine microtubules growing from a bright centrosome next to
the nucleus. Treated cells get a per-cell severity ``s`` (around ``low_dose`` or ``high_dose``,
with overlapping spread): a share of the array is replaced by thicker bundles that start anywhere
in the cytoplasm, wander and curl, and the centrosome fades. Low and high dose differ only in
degree (bundle share, bundle width, curl), so they are hard to tell apart.
Evidence: the centrosome and its radial aster (untreated) or the bundles (treated).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import shapes
from .cells import ShapeStyle, sample_cells
from .tasks import Drawing, SynthOptions, SynthTask, Tape, check_range, register_task

N_TUBES, TUBE_VERTICES = 72, 16
SEVERITY_SPREAD = 0.08
BUNDLE = 3  # tubes per bundle
SIGMA = 0.65  # filament blur at 64 px
SPACING = 0.7  # splat points along filaments every SPACING px at 64 px
EVIDENCE_LEVEL = 0.25
STYLE = ShapeStyle(
    radius=0.28, radius_spread=0.1, aspect=(1.1, 1.6), lobes=0.07,
    bump_height=(0.15, 0.4), bump_prob=0.5, nucleus_radius=0.11,
)  # fmt: skip


@dataclass(frozen=True)
class MicrotubuleOptions(SynthOptions):
    """Options of ``microtubule``.

    Attributes:
        low_dose: mean phenotype severity of ``low_dose`` cells, in (0, 1].
        high_dose: mean phenotype severity of ``high_dose`` cells, in (0, 1], > ``low_dose``.
    """

    plates: int = 3
    low_dose: float = 0.5
    high_dose: float = 0.65

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("low_dose", check_range("low_dose", self.low_dose, 0, 1, lo_open=True))
        self._set("high_dose", check_range("high_dose", self.high_dose, 0, 1, lo_open=True))
        if self.high_dose <= self.low_dose:
            raise ValueError(
                f"option high_dose={self.high_dose} must be greater than low_dose={self.low_dose}"
            )


@register_task("microtubule")
class Microtubule(SynthTask):
    channel_names = ("tubulin",)
    classes = ("untreated", "low_dose", "high_dose")
    peaks = (1500.0,)
    options_class = MicrotubuleOptions
    n_uniform = 19 + 1 + 6 * N_TUBES
    n_normal = 11 + 1 + 2 * N_TUBES + N_TUBES * (TUBE_VERTICES - 1)

    def draw(
        self, shown: np.ndarray, tape: Tape, size: int, options: MicrotubuleOptions
    ) -> Drawing:
        n = len(shown)
        px = size / 64.0
        cells = sample_cells(tape, size, STYLE, STYLE, np.zeros(n))
        inside = shapes.soft_inside(cells.rho, 0.06)
        (z_severity,) = tape.normal(1).T
        dose = np.array([0.0, options.low_dose, options.high_dose])[shown]
        s = np.where(
            shown > 0, np.clip(dose + SEVERITY_SPREAD * z_severity, 0.05, 1.0), 0.0
        )  # (N,)

        # Centrosome at the nuclear rim; bundles are the first n_bundled tubes, in groups.
        (u_centro,) = tape.uniform(1).T
        cx, cy = cells.nucleus_point(2 * np.pi * u_centro, 1.2)
        share = np.where(s > 0, np.clip(0.3 + 0.6 * s, 0, 1), 0.0)  # of tubes in bundles
        n_bundled = (np.rint(N_TUBES * share / BUNDLE) * BUNDLE).astype(np.int64)
        m = np.arange(N_TUBES)[None, :]
        bundled = m < n_bundled[:, None]  # (N, M)
        leader = np.where(bundled, m - m % BUNDLE, m)

        heading = 2 * np.pi * tape.uniform(N_TUBES)
        start_angle = 2 * np.pi * tape.uniform(N_TUBES)
        start_reach = 0.2 + 0.6 * tape.uniform(N_TUBES)
        weight = 0.3 + 0.25 * tape.uniform(N_TUBES)
        curl_sign = np.where(tape.uniform(N_TUBES) < 0.5, -1.0, 1.0)
        curl = curl_sign * (0.04 + 0.12 * tape.uniform(N_TUBES)) * (0.5 + s)[:, None]
        jitter = 0.4 * px * tape.normal(2, N_TUBES)
        wander = tape.normal(N_TUBES, TUBE_VERTICES - 1)

        bx, by = cells.body_point(start_angle, start_reach)
        x0 = np.where(bundled, bx, cx[:, None] + jitter[:, 0])
        y0 = np.where(bundled, by, cy[:, None] + jitter[:, 1])
        turn_sd = np.where(bundled, 0.12 + 0.15 * s[:, None], 0.13)
        turns = wander * turn_sd[..., None] + np.where(bundled, curl, 0.0)[..., None]
        step = 0.6 * size / (TUBE_VERTICES - 1)
        x, y, head = shapes.walk(x0, y0, heading, step, turns)
        # Followers copy their leader's path, shifted sideways: bundles of parallel tubes.
        x, y, head = (np.take_along_axis(a, leader[..., None], axis=1) for a in (x, y, head))
        offset = (m % BUNDLE - (BUNDLE - 1) / 2.0) * (0.3 + 0.3 * s[:, None]) * px
        lateral = np.where(bundled, offset, 0.0)
        x = x - lateral[..., None] * np.sin(head)
        y = y + lateral[..., None] * np.cos(head)
        alive = shapes.alive_until_exit(cells.rho_at(x, y), 0.96)
        x, y, ds, alive = shapes.densify(x, y, SPACING * px, step, alive)
        w = (weight * np.where(bundled, 1.0 + 0.3 * s[:, None], 1.0))[..., None] * alive
        sigma = SIGMA * px
        layer = bundled.astype(np.int64)[..., None]  # 0: radial array, 1: bundles
        points = (x, y, shapes.line_weight(w, ds, sigma), layer)
        radial, bundles = shapes.blur(shapes.splat([points], size, n_layers=2), sigma).transpose(
            1, 0, 2, 3
        )

        # Centrosome spot, fading with severity.
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        d2 = np.square(xx[None] - cx[:, None, None]) + np.square(yy[None] - cy[:, None, None])
        spot_sigma = 1.3 * px
        spot = (
            np.exp(-d2 / np.float32(2 * spot_sigma**2))
            * (1.4 * (1 - 0.4 * (s > 0) - 0.4 * s)).astype(np.float32)[:, None, None]
        )
        nucleus = shapes.soft_inside(cells.rho_n, 0.15)
        tubulin = (0.12 + radial + bundles) * (1 - 0.45 * nucleus) + spot
        tubulin = tubulin * inside

        aster = ((radial > EVIDENCE_LEVEL) & (d2 < np.square(0.22 * size))) | (
            d2 < np.square(2.5 * spot_sigma)
        )
        evidence = np.where((s > 0)[:, None, None], bundles > EVIDENCE_LEVEL, aster)
        return Drawing(
            signal=tubulin[:, None].astype(np.float32), mask=cells.mask, evidence=evidence
        )
