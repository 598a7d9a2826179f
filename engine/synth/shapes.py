"""Drawing primitives vectorised over a batch of cells.

Everything works on whole batches at once: polar coordinates of star-shaped outlines, filament
paths as random walks, bilinear splats of path points, separable Gaussian blur and smooth random
fields (separable filters, no BLAS). Coordinates are pixels of a square ``size`` crop with
pixel ``(row, col)`` centred at ``(y, x) = (row, col)``; arrays carry the batch axis first.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

TWO_PI = 2.0 * np.pi
OUTSIDE = np.float32(9.0)  # normalised radius reported for points that fall off the crop


@lru_cache(maxsize=16)
def _axis(size: int) -> np.ndarray:
    return np.arange(size, dtype=np.float32)


def rotated_frame(size: int, cx, cy, phi) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in each cell's frame: centred on (cx, cy), x-axis along angle ``phi``.

    Returns:
        ``(u, v)``, each (N, H, W) float32.
    """
    axis = _axis(size)
    dx = axis[None, None, :] - cx.astype(np.float32)[:, None, None]  # (N, 1, W)
    dy = axis[None, :, None] - cy.astype(np.float32)[:, None, None]  # (N, H, 1)
    c = np.cos(phi).astype(np.float32)[:, None, None]
    s = np.sin(phi).astype(np.float32)[:, None, None]
    return dx * c + dy * s, dy * c - dx * s


def to_crop(u, v, cx, cy, phi) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`rotated_frame` for point arrays (N, ...): frame (u, v) -> crop (x, y)."""
    shape = (-1,) + (1,) * (np.ndim(u) - 1)
    c, s = np.cos(phi).reshape(shape), np.sin(phi).reshape(shape)
    return cx.reshape(shape) + u * c - v * s, cy.reshape(shape) + u * s + v * c


def outline_table(
    n_angles: int, amps, phases, bump_angles, bump_heights, bump_widths
) -> np.ndarray:
    """Radius multiplier of a star-shaped outline sampled at ``n_angles`` angles in [-pi, pi).

    ``R(t) = 1 + sum_k amps[k] cos((k + 2) t + phases[k]) + sum_j h_j exp(-(d(t, a_j) / w_j)^2)``
    with harmonics from 2 upwards (lobes) and Gaussian bumps (protrusions).

    Returns:
        (N, n_angles) float32, clipped to stay positive.
    """
    t = np.linspace(-np.pi, np.pi, n_angles, endpoint=False)[None, None, :]  # (1, 1, T)
    k = np.arange(2, amps.shape[1] + 2)[None, :, None]
    table = 1.0 + (amps[..., None] * np.cos(k * t + phases[..., None])).sum(axis=1)
    d = np.angle(np.exp(1j * (t - bump_angles[..., None])))  # wrapped angular distance
    table += (bump_heights[..., None] * np.exp(-np.square(d / bump_widths[..., None]))).sum(axis=1)
    return np.maximum(table, 0.3).astype(np.float32)


def lookup(table: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Linearly interpolate per-cell angle tables (N, T) at angles ``theta`` (N, ...)."""
    n, size = table.shape
    pos = (theta.reshape(n, -1) + np.float32(np.pi)) * np.float32(size / TWO_PI)
    i0 = pos.astype(np.int32)
    frac = pos - i0
    i0 %= size
    lo = np.take_along_axis(table, i0, axis=1)
    hi = np.take_along_axis(table, (i0 + 1) % size, axis=1)
    return (lo + (hi - lo) * frac).reshape(theta.shape)


def star_rho(u, v, a, b, table) -> np.ndarray:
    """Normalised radius of points (u, v) (N, ...) in an ellipse (a, b) with an outline table.

    ``rho < 1`` is inside the outline; ``rho`` grows linearly with distance along each ray.
    """
    shape = (-1,) + (1,) * (np.ndim(u) - 1)
    ue = u / a.reshape(shape).astype(np.float32)
    ve = v / b.reshape(shape).astype(np.float32)
    r = np.sqrt(ue * ue + ve * ve)
    return r / lookup(table, np.arctan2(ve, ue))


def splat(groups, size: int, n_layers: int | None = None) -> np.ndarray:
    """Bilinearly deposit weighted points into per-cell image layers with one ``np.bincount``.

    Args:
        groups: sequence of ``(x, y, weight, layer)``; arrays shaped (N, ...) (weight and layer
            broadcast to x), ``layer`` an int or int array choosing the output layer per point.
        size: image side.
        n_layers: number of layers (default: one per group).

    Returns:
        (N, n_layers, size, size) float32.
    """
    n_layers = len(groups) if n_layers is None else n_layers
    n = groups[0][0].shape[0]
    cell = np.arange(n, dtype=np.int64)[:, None] * n_layers
    indices, weights = [], []
    for x, y, weight, layer in groups:
        shape = x.shape
        x, y = x.reshape(n, -1), y.reshape(n, -1)
        x0, y0 = np.floor(x), np.floor(y)
        fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
        inside = (x0 >= 0) & (x0 < size - 1) & (y0 >= 0) & (y0 < size - 1)
        weight = np.where(inside, np.broadcast_to(weight, shape).reshape(n, -1), 0)
        layer = np.broadcast_to(layer, shape).reshape(n, -1) if np.ndim(layer) else layer
        i = ((cell + layer) * size + np.clip(y0, 0, size - 2).astype(np.int64)) * size
        i += np.clip(x0, 0, size - 2).astype(np.int64)
        wa = (weight * (1 - fx)).astype(np.float32)
        wb = (weight * fx).astype(np.float32)
        indices += [i, i + 1, i + size, i + size + 1]
        weights += [wa * (1 - fy), wb * (1 - fy), wa * fy, wb * fy]
    flat = np.bincount(
        np.concatenate(indices, axis=None),
        weights=np.concatenate(weights, axis=None),
        minlength=n * n_layers * size * size,
    )
    return flat.reshape(n, n_layers, size, size).astype(np.float32)


def sample_nearest(field: np.ndarray, x, y, fill=OUTSIDE) -> np.ndarray:
    """Values of per-cell images (N, H, W) at the nearest pixels of points (N, ...)."""
    n, h, w = field.shape
    ix = np.rint(x).astype(np.int64)
    iy = np.rint(y).astype(np.int64)
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    flat = np.clip(iy, 0, h - 1) * w + np.clip(ix, 0, w - 1)
    vals = np.take_along_axis(field.reshape(n, -1), flat.reshape(n, -1), axis=1).reshape(x.shape)
    return np.where(inside, vals, fill)


def walk(x0, y0, angle0, step, turns) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paths that start at (x0, y0) (N, M) heading ``angle0`` and turn by ``turns`` (N, M, S-1).

    Returns:
        ``(x, y, heading)`` of the S vertices, each (N, M, S).
    """
    heading = angle0[..., None] + np.concatenate(
        [np.zeros_like(turns[..., :1]), np.cumsum(turns, axis=-1)], axis=-1
    )
    step = np.reshape(step, np.shape(step) + (1,) * (heading.ndim - np.ndim(step)))
    dx = np.cumsum(step * np.cos(heading[..., :-1]), axis=-1)
    dy = np.cumsum(step * np.sin(heading[..., :-1]), axis=-1)
    x = np.concatenate([x0[..., None], x0[..., None] + dx], axis=-1)
    y = np.concatenate([y0[..., None], y0[..., None] + dy], axis=-1)
    return x, y, heading


def densify(x, y, spacing: float, longest: float, *values):
    """Points about every ``spacing`` pixels along paths with vertices (N, M, S).

    Args:
        x, y: vertex coordinates (N, M, S).
        spacing: target distance between points, in pixels.
        longest: upper bound on the segment length (pixels), fixed by the caller so that the
            subdivision never depends on the other cells of a batch.
        *values: per-vertex arrays (N, M, S); each point takes the value of its segment start.

    Returns:
        ``(x, y, ds, *values)`` each (N, M, (S - 1) * q), float32, where q = ceil(longest /
        spacing) and ``ds`` is the path length each point stands for (to weight splats by length).
    """
    x, y = x.astype(np.float32), y.astype(np.float32)
    dx, dy = np.diff(x, axis=-1), np.diff(y, axis=-1)
    seg = np.hypot(dx, dy)  # (N, M, S-1)
    q = max(1, int(np.ceil(longest / spacing)))
    t = (np.arange(q, dtype=np.float32) / q)[None, None, None, :]
    px = x[..., :-1, None] + dx[..., None] * t
    py = y[..., :-1, None] + dy[..., None] * t
    shape = x.shape[:-1] + (-1,)
    out = [px.reshape(shape), py.reshape(shape)]
    for v in (seg / q, *values):
        v = np.asarray(v, dtype=np.float32)[..., : x.shape[-1] - 1, None]
        out.append(np.broadcast_to(v, px.shape).reshape(shape))
    return tuple(out)


def line_weight(intensity, ds, sigma: float):
    """Splat weight per point so that a line blurred by ``sigma`` peaks at ``intensity``."""
    return intensity * ds * np.float32(np.sqrt(2.0 * np.pi) * sigma)


def alive_until_exit(rho_at_points: np.ndarray, limit) -> np.ndarray:
    """1 for path points (N, M, P) before the path first leaves ``rho < limit``, then 0."""
    shape = (-1,) + (1,) * (rho_at_points.ndim - 1)
    inside = (rho_at_points < np.reshape(limit, shape)).astype(np.uint8)
    return np.minimum.accumulate(inside, axis=-1).astype(np.float32)


# Blur and upsampling avoid BLAS on purpose: a threaded GEMM may sum in a different order with
# another thread count or CPU, and the crops must be identical bytes wherever they are made.
@lru_cache(maxsize=32)
def _gauss_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(4.0 * sigma)))
    k = np.exp(-np.square(np.arange(-radius, radius + 1)) / (2.0 * sigma**2))
    return (k / k.sum()).astype(np.float32)


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the last two axes, ``sigma`` in pixels, zero padding."""
    from scipy import ndimage  # here, not at the top: `cytotune synth --help` lists the tasks

    k = _gauss_kernel(round(float(sigma), 3))
    out = ndimage.correlate1d(images, k, axis=-1, mode="constant")
    return ndimage.correlate1d(out, k, axis=-2, mode="constant")


@lru_cache(maxsize=16)
def _upsample_matrix(size: int, low: int) -> np.ndarray:
    centres = (np.arange(low) + 0.5) * size / low - 0.5
    sigma = 0.75 * size / low
    m = np.exp(-np.square(np.arange(size)[:, None] - centres[None, :]) / (2.0 * sigma**2))
    return (m / np.sqrt(np.square(m).sum(axis=1, keepdims=True))).astype(np.float32)


def smooth_field(white: np.ndarray, size: int) -> np.ndarray:
    """Upsample white noise (N, L, L) to a smooth unit-variance field (N, size, size).

    The grain is set by ``L`` relative to the crop, so fields look the same at every size.
    """
    m = _upsample_matrix(size, white.shape[-1])
    rows = np.einsum("nkl,jl->nkj", white.astype(np.float32), m)  # (N, L, size)
    return np.einsum("ik,nkj->nij", m, rows)


def soft_inside(rho: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased indicator of ``rho < 1`` with an edge ramp of ``width`` (in rho units)."""
    return np.clip((1.0 - rho) * np.float32(1.0 / width) + np.float32(0.5), 0.0, 1.0)
