"""Small fields with known discs, shared by the crop tests."""

from __future__ import annotations

import numpy as np


def disc_field(shape, centres, radius, *, value=200, background=20, dtype=np.uint8, seed=0):
    """A field with bright discs (one label each) on a noisy background; returns (image, truth)."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    truth = np.zeros(shape, dtype=np.int32)
    for k, (cy, cx) in enumerate(centres, start=1):
        r = radius[k - 1] if np.ndim(radius) else radius
        truth[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (truth == 0)] = k
    rng = np.random.default_rng(seed)
    image = np.where(truth > 0, value, background) + rng.normal(0, 3, shape)
    return np.clip(image, 0, np.iinfo(dtype).max).astype(dtype), truth
