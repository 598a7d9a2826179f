"""Localisation: how much attribution lands inside a mask, and where its peak is.

The mask is the cell mask on real data, or the evidence mask written by ``cytotune synth`` on
synthetic data (where the class-defining signal is known to be).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import mask_bhw, to_bhw, to_numpy

__all__ = ["mass_inside", "pointing_game"]


def mass_inside(maps: Any, mask: Any) -> np.ndarray:
    """Share of the positive attribution mass that lies inside the mask.

    Negative attributions are clipped to 0 first (they are evidence *against* the target);
    channels of ``(B, C, H, W)`` maps are summed after clipping.

    Args:
        maps: ``(B, H, W)``, ``(B, 1, H, W)`` or ``(B, C, H, W)`` array or tensor.
        mask: ``(H, W)`` shared mask or ``(B, H, W)`` / ``(B, 1, H, W)`` masks; nonzero = inside.

    Returns:
        ``(B,)`` float64 shares in [0, 1]; NaN for a map with no positive mass.
    """
    pos = to_bhw(np.clip(to_numpy(maps), 0, None))  # clip per channel, then sum channels
    inside = mask_bhw(mask, pos.shape[0], pos.shape[1:])
    total = pos.sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, (pos * inside).sum(axis=(1, 2)) / total, np.nan)


def pointing_game(maps: Any, mask: Any, tolerance: float = 0) -> np.ndarray:
    """Whether each map's maximum falls inside the mask (Zhang et al. 2016).

    The maximum is taken over the channel-summed map; ties go to the first pixel in row-major
    order. With ``tolerance > 0`` a hit also counts when a mask pixel lies within that Euclidean
    distance (in pixels) of the maximum, i.e. the mask is dilated by a disc. Images with an empty
    mask count as misses; drop them first if they should not count.

    Args:
        maps: ``(B, H, W)``, ``(B, 1, H, W)`` or ``(B, C, H, W)`` array or tensor.
        mask: ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``; nonzero = inside.
        tolerance: Dilation radius in pixels (>= 0).

    Returns:
        ``(B,)`` boolean hits; ``hits.mean()`` is the hit rate.
    """
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance!r}")
    m = to_bhw(maps)
    b, h, w = m.shape
    inside = mask_bhw(mask, b, (h, w))
    flat = np.where(np.isnan(m), -np.inf, m).reshape(b, -1)
    peak = flat.argmax(axis=1)  # first maximum in row-major order
    rows, cols = np.divmod(peak, w)
    if tolerance == 0:
        return inside[np.arange(b), rows, cols]
    t = int(np.floor(tolerance))
    hits = np.zeros(b, dtype=bool)
    for i in range(b):
        r0, r1 = max(rows[i] - t, 0), min(rows[i] + t + 1, h)
        c0, c1 = max(cols[i] - t, 0), min(cols[i] + t + 1, w)
        rr, cc = np.nonzero(inside[i, r0:r1, c0:c1])
        d2 = (rr + r0 - rows[i]) ** 2 + (cc + c0 - cols[i]) ** 2
        hits[i] = bool((d2 <= tolerance**2).any())
    return hits
