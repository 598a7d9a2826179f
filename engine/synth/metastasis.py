"""Task ``metastasis``: normal vs metastasizing fibroblast-like cells (DNA, actin, vimentin).

Normal cells are irregular and elongated with protrusions; their vimentin filaments run from the
nucleus out to the periphery. Metastasizing cells are rounder and more uniform, with vimentin
collapsed into a perinuclear cage of arcs around the nucleus. Actin is a cortical rim plus stress
fibres (fewer in metastasizing cells); DNA is a textured elliptical nucleus.
Evidence: the peripheral vimentin filaments (normal) or the perinuclear cage (metastasizing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import shapes
from .cells import ShapeStyle, sample_cells
from .tasks import Drawing, SynthOptions, SynthTask, Tape, check_range, register_task

N_SPOKES, SPOKE_VERTICES = 32, 16  # vimentin filaments from nucleus to periphery
N_ARCS, ARC_VERTICES = 20, 16  # perinuclear cage arcs
N_FIBRES = 10  # actin stress fibres
TEXTURE = 12  # chromatin texture grid (per crop side)
SIGMA = 0.7  # filament blur at 64 px
SPACING = 0.7  # splat points along filaments every SPACING px at 64 px
EVIDENCE_LEVEL = 0.3

IRREGULAR = ShapeStyle(
    radius=0.27, radius_spread=0.12, aspect=(1.3, 1.9), lobes=0.09,
    bump_height=(0.2, 0.5), bump_prob=0.7, nucleus_radius=0.12,
)  # fmt: skip
ROUND = ShapeStyle(
    radius=0.27, radius_spread=0.05, aspect=(1.0, 1.15), lobes=0.025,
    bump_height=(0.0, 0.1), bump_prob=0.0, nucleus_radius=0.12,
)  # fmt: skip


@dataclass(frozen=True)
class MetastasisOptions(SynthOptions):
    """Options of ``metastasis``.

    Attributes:
        shape_difference: in [0, 1]; how much rounder metastasizing cells are. At 0 both classes
            share one shape distribution and only the cytoskeleton tells them apart (vimentin
            layout; fewer stress fibres and a brighter cortex in metastasizing cells).
    """

    shape_difference: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("shape_difference", check_range("shape_difference", self.shape_difference, 0, 1))


@register_task("metastasis")
class Metastasis(SynthTask):
    channel_names = ("dna", "actin", "vimentin")
    classes = ("normal", "metastasizing")
    peaks = (1800.0, 1000.0, 1300.0)
    options_class = MetastasisOptions
    n_uniform = 19 + 3 * N_SPOKES + 4 * N_ARCS + 2 * N_FIBRES + 1
    n_normal = 11 + TEXTURE**2 + N_SPOKES * SPOKE_VERTICES + N_ARCS * ARC_VERTICES + N_FIBRES

    def draw(self, shown: np.ndarray, tape: Tape, size: int, options: MetastasisOptions) -> Drawing:
        met = (shown == 1).astype(np.float32)  # (N,)
        px = size / 64.0  # pixel scale relative to the default size
        cells = sample_cells(tape, size, IRREGULAR, ROUND, met * options.shape_difference)
        inside = shapes.soft_inside(cells.rho, 0.06)  # (N, H, W)
        texture = shapes.smooth_field(tape.normal(TEXTURE, TEXTURE), size)
        sigma = SIGMA * px

        # DNA: textured nucleus with a soft edge.
        nucleus = shapes.soft_inside(cells.rho_n + 0.05 * texture, 0.12)
        dna = nucleus * (0.7 + 0.3 * np.tanh(0.9 * texture))

        # Vimentin spokes: nucleus -> periphery (normal), short and dim (metastasizing).
        angle = 2 * np.pi * tape.uniform(N_SPOKES)
        start = 0.9 + 0.3 * tape.uniform(N_SPOKES)
        weight = 0.35 + 0.4 * tape.uniform(N_SPOKES)
        x0, y0 = cells.nucleus_point(angle, start)
        heading = angle + cells.nphi[:, None] + 0.5 * tape.normal(N_SPOKES)
        turns = 0.2 * tape.normal(N_SPOKES, SPOKE_VERTICES - 1)
        step = 0.55 * size / (SPOKE_VERTICES - 1)
        x, y, _ = shapes.walk(x0, y0, heading, step, turns)
        reach = 0.96 - 0.4 * met  # metastasizing spokes stop well before the membrane
        alive = shapes.alive_until_exit(cells.rho_at(x, y), reach)
        x, y, ds, alive = shapes.densify(x, y, SPACING * px, step, alive)
        intensity = weight[..., None] * (1.0 - 0.6 * met)[:, None, None] * alive
        spokes = (x, y, shapes.line_weight(intensity, ds, sigma), 0)

        # Vimentin cage: arcs hugging the nucleus (metastasizing), faint in normal cells.
        centre = 2 * np.pi * tape.uniform(N_ARCS)
        span = 0.9 + 1.8 * tape.uniform(N_ARCS)
        radius = 1.08 + 0.4 * tape.uniform(N_ARCS)
        arc_weight = (0.4 + 0.4 * tape.uniform(N_ARCS)) * (0.12 + 0.88 * met)[:, None]
        t = np.linspace(-0.5, 0.5, ARC_VERTICES)
        arc_angle = centre[..., None] + span[..., None] * t  # (N, ARCS, V)
        wobble = np.cumsum(0.04 * tape.normal(N_ARCS, ARC_VERTICES), axis=-1)
        x, y = cells.nucleus_point(arc_angle, radius[..., None] + wobble)
        longest = 0.03 * size  # a typical arc segment; longer ones get sparser points
        x, y, ds, alive = shapes.densify(x, y, SPACING * px, longest, cells.rho_at(x, y) < 0.95)
        cage = (x, y, shapes.line_weight(arc_weight[..., None] * alive, ds, sigma), 1)

        # Actin: cortical rim plus stress fibres along the long axis.
        u_offset = tape.uniform(N_FIBRES)
        fibre_weight = 0.4 + 0.5 * tape.uniform(N_FIBRES)
        (u_count,) = tape.uniform(1).T
        count = np.where(met > 0, np.floor(3 * u_count), 4 + np.floor(7 * u_count))
        fibre_weight = fibre_weight * (np.arange(N_FIBRES)[None, :] < count[:, None])
        tilt = 0.12 * tape.normal(N_FIBRES)
        along = np.array([-1.2, 1.2])[None, None, :] * cells.a[:, None, None]  # (N, 1, 2)
        across = ((2 * u_offset - 1) * 0.75 * cells.b[:, None])[..., None]  # (N, F, 1)
        fu = along * np.cos(tilt)[..., None] - across * np.sin(tilt)[..., None]
        fv = along * np.sin(tilt)[..., None] + across * np.cos(tilt)[..., None]
        x, y = shapes.to_crop(fu, fv, cells.cx, cells.cy, cells.phi)
        x, y, ds = shapes.densify(x, y, SPACING * px, 0.8 * size)  # a typical 2.4 a
        intensity = fibre_weight[..., None] * (cells.rho_at(x, y) < 0.92)
        fibres = (x, y, shapes.line_weight(intensity, ds, sigma), 2)

        spokes, cage, fibres = shapes.blur(
            shapes.splat([spokes, cage, fibres], size), sigma
        ).transpose(1, 0, 2, 3)
        haze = (
            np.exp(-np.square((cells.rho_n - 1.25) * np.float32(1 / 0.3)))
            * (0.03 + 0.05 * met)[:, None, None]
        )
        vimentin = (0.07 * (1 + 0.2 * texture) + spokes + cage + haze) * inside
        rim = np.float32(1.0) - cells.rho
        cortex = np.exp(-np.square(rim * np.float32(1 / 0.09))) * (0.55 + 0.3 * met)[:, None, None]
        actin = (0.1 + cortex + fibres) * inside

        signal = np.stack([dna, actin, vimentin], axis=1).astype(np.float32)  # (N, 3, H, W)
        periphery = (spokes > EVIDENCE_LEVEL) & (cells.rho > 0.5)
        evidence = np.where(met[:, None, None] > 0, cage > EVIDENCE_LEVEL, periphery)
        return Drawing(signal=signal, mask=cells.mask, evidence=evidence)
