"""Explanation maps for hand-built test studies, in the stored format that
:func:`cytotune.explainers.job.layout.decode_map` reads (the explain workers write whole batches
through :func:`cytotune.explainers.job.worker.binary_column`)."""

from __future__ import annotations

import numpy as np


def encode_map(array: np.ndarray) -> tuple[bytes, list[int]]:
    """float16 bytes and shape (C, H, W) of one map; an (H, W) map gets C = 1."""
    array = np.ascontiguousarray(array, dtype=np.float16)
    if array.ndim == 2:
        array = array[None]
    return array.tobytes(), list(array.shape)
