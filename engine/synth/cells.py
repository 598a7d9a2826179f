"""Cell bodies and nuclei shared by the tasks: outlines, polar maps and nuclear ellipses.

A cell is an ellipse (semi-axes ``a``, ``b``, angle ``phi``) whose radius is modulated by low
harmonics (lobes) and Gaussian bumps (protrusions). ``rho`` is the normalised radius of every
pixel (``rho < 1`` inside), which tasks use to place cortex, filaments and periphery.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import shapes
from .tasks import Tape

N_ANGLES = 128
N_LOBES = 4  # harmonics 2..5
N_BUMPS = 3


@dataclass(frozen=True)
class ShapeStyle:
    """Distribution of cell shapes; all lengths are fractions of the crop side."""

    radius: float = 0.23  # mean equivalent radius
    radius_spread: float = 0.1  # log-normal spread of the radius
    aspect: tuple[float, float] = (1.0, 1.3)  # uniform range of the long/short axis ratio
    lobes: float = 0.05  # amplitude of harmonics 2..5 (relative radius)
    bump_height: tuple[float, float] = (0.0, 0.0)  # protrusion height range (relative radius)
    bump_prob: float = 0.0  # chance each of the N_BUMPS protrusions is present
    nucleus_radius: float = 0.11


@dataclass
class Cells:
    """Geometry of a batch of cells, per cell (N,) or per pixel (N, H, W)."""

    cx: np.ndarray
    cy: np.ndarray
    phi: np.ndarray
    a: np.ndarray
    b: np.ndarray
    table: np.ndarray  # (N, N_ANGLES) outline radius multiplier
    rho: np.ndarray  # (N, H, W) normalised cell radius
    ncx: np.ndarray  # nucleus centre and frame
    ncy: np.ndarray
    nphi: np.ndarray
    na: np.ndarray
    nb: np.ndarray
    rho_n: np.ndarray  # (N, H, W) normalised nuclear radius

    @property
    def mask(self) -> np.ndarray:
        return self.rho < 1.0

    def nucleus_point(self, angle, scale) -> tuple[np.ndarray, np.ndarray]:
        """Crop coordinates of the point at ``angle`` on the nuclear ellipse scaled by ``scale``."""
        shape = (-1,) + (1,) * (np.ndim(angle) - 1)
        u = scale * self.na.reshape(shape) * np.cos(angle)
        v = scale * self.nb.reshape(shape) * np.sin(angle)
        return shapes.to_crop(u, v, self.ncx, self.ncy, self.nphi)

    def body_point(self, angle, scale) -> tuple[np.ndarray, np.ndarray]:
        """Crop coordinates of the point at ``angle`` (cell frame) and ``scale`` of the outline."""
        shape = (-1,) + (1,) * (np.ndim(angle) - 1)
        wrapped = np.angle(np.exp(1j * angle)).astype(np.float32)
        reach = scale * shapes.lookup(self.table, wrapped)
        u = reach * self.a.reshape(shape) * np.cos(angle)
        v = reach * self.b.reshape(shape) * np.sin(angle)
        return shapes.to_crop(u, v, self.cx, self.cy, self.phi)

    def rho_at(self, x, y) -> np.ndarray:
        """Normalised cell radius at points (N, ...), from the nearest pixel (9 off the crop)."""
        return shapes.sample_nearest(self.rho, x, y)


def _lerp(lo, hi, t):
    return lo + (hi - lo) * t


def sample_cells(tape: Tape, size: int, irregular: ShapeStyle, regular: ShapeStyle, t) -> Cells:
    """Draw cell and nucleus geometry; per cell, parameters blend the two styles by ``t`` (N,).

    Consumes 19 uniforms and 11 normals per cell from ``tape``.
    """
    t = np.asarray(t, dtype=np.float64)
    style = {
        name: _lerp(
            np.asarray(getattr(irregular, name)), np.asarray(getattr(regular, name)), t[:, None]
        )
        for name in (
            "radius",
            "radius_spread",
            "lobes",
            "bump_prob",
            "nucleus_radius",
            "aspect",
            "bump_height",
        )
    }
    style = {k: v[:, 0] if v.shape[1] == 1 else v for k, v in style.items()}
    u_phi, u_aspect, u_naspect = tape.uniform(3).T
    u_lobe_phase = tape.uniform(N_LOBES)
    u_bump_angle, u_bump_height, u_bump_width, u_bump_on = (tape.uniform(N_BUMPS) for _ in range(4))
    z_centre = tape.normal(2)
    z_radius, z_nradius, z_nphi = tape.normal(3).T
    z_lobes = tape.normal(N_LOBES)
    z_noffset = tape.normal(2)

    centre = (size - 1) / 2.0
    cx, cy = centre + 0.04 * size * z_centre.T
    phi = 2 * np.pi * u_phi
    radius = style["radius"] * size * np.exp(style["radius_spread"] * np.clip(z_radius, -2.5, 2.5))
    aspect = _lerp(style["aspect"][:, 0], style["aspect"][:, 1], u_aspect)
    a, b = radius * np.sqrt(aspect), radius / np.sqrt(aspect)
    amps = style["lobes"][:, None] * z_lobes / np.sqrt(np.arange(2, 2 + N_LOBES))
    on = u_bump_on < style["bump_prob"][:, None]
    heights = on * _lerp(style["bump_height"][:, :1], style["bump_height"][:, 1:], u_bump_height)
    table = shapes.outline_table(
        N_ANGLES,
        amps,
        2 * np.pi * u_lobe_phase,
        2 * np.pi * u_bump_angle,
        heights,
        0.2 + 0.3 * u_bump_width,
    )
    u, v = shapes.rotated_frame(size, cx, cy, phi)
    rho = shapes.star_rho(u, v, a, b, table)

    n_radius = style["nucleus_radius"] * size * np.exp(0.1 * np.clip(z_nradius, -2.5, 2.5))
    n_aspect = 1.1 + 0.3 * u_naspect
    na = np.minimum(n_radius * np.sqrt(n_aspect), 0.6 * a)
    nb = np.minimum(n_radius / np.sqrt(n_aspect), 0.6 * b)
    offset = np.clip(z_noffset, -1.5, 1.5) * np.stack([0.12 * a, 0.08 * b], axis=1)
    ncx, ncy = shapes.to_crop(offset[:, 0], offset[:, 1], cx, cy, phi)
    nphi = phi + 0.25 * np.clip(z_nphi, -2, 2)
    un, vn = shapes.rotated_frame(size, ncx, ncy, nphi)
    un /= na.astype(np.float32)[:, None, None]
    vn /= nb.astype(np.float32)[:, None, None]
    rho_n = np.sqrt(un * un + vn * vn)
    return Cells(cx, cy, phi, a, b, table, rho, ncx, ncy, nphi, na, nb, rho_n)
