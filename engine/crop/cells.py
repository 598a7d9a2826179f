"""Whole cells around their nuclei: a seeded watershed on a cell-body channel (actin, tubulin...).

``cytotune crop --cell-channel NAME`` finds nuclei as usual, then grows each one into its cell
body: the cell channel is stretched and smoothed, its foreground is a threshold (Li by default,
holes filled, every nucleus included), and a watershed on the image's gradient (Sobel), seeded
with the nuclei labels and limited to the foreground, splits the foreground between the nuclei.
A body keeps its nucleus's label, contains it, and ends where the cell's edge (the steepest
intensity change) or a neighbour's territory begins; foreground that no nucleus reaches is left
out. Li rather than Otsu: on cortical actin (a bright rim round a dim cytoplasm) Otsu often
separates rim from cytoplasm, not cell from background (synthetic metastasis fields, 48 px
cells: grown/true area median 0.96 but 10th percentile 0.50 with Otsu; 1.05 and 1.03 with Li).
"""

from __future__ import annotations

import numpy as np

from .finders import normalise

THRESHOLDS = ("li", "otsu")
CELL_DEFAULTS = {"sigma": 0.5, "threshold": "li"}  # recorded in a dataset's provenance


def cell_foreground(image: np.ndarray, sigma: float = 0.5, threshold: str = "li") -> np.ndarray:
    """Boolean (H, W) mask of cell-body pixels of one cell channel.

    Args:
        image: (H, W) cell channel.
        sigma: Gaussian smoothing of the stretched channel, pixels.
        threshold: "li" or "otsu" (scikit-image's threshold_li / threshold_otsu).
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_li, threshold_otsu

    if threshold not in THRESHOLDS:
        raise ValueError(f"cell threshold {threshold!r} must be one of {THRESHOLDS}")
    x = _smoothed(image, sigma)
    if x.max() <= x.min():
        return np.zeros(x.shape, dtype=bool)
    cut = (threshold_li if threshold == "li" else threshold_otsu)(x)
    return ndi.binary_fill_holes(x > cut)


def _smoothed(image: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.filters import gaussian

    x = normalise(np.asarray(image))
    return gaussian(x, sigma=sigma, preserve_range=True) if sigma > 0 else x


def grow_cells(
    image: np.ndarray, nuclei: np.ndarray, *, sigma: float = 0.5, threshold: str = "li"
) -> np.ndarray:
    """Grow every nucleus into its cell body on a cell channel.

    Args:
        image: (H, W) cell-body channel (e.g. actin).
        nuclei: (H, W) instance labels of the nuclei (0 background), from a finder.
        sigma: Gaussian smoothing of the stretched channel, pixels.
        threshold: foreground threshold, "li" (default) or "otsu".

    Returns:
        (H, W) int32 labels: body k holds nucleus k (same label) and its share of the foreground.
    """
    from skimage.filters import sobel
    from skimage.segmentation import watershed

    image, nuclei = np.asarray(image), np.asarray(nuclei)
    if image.ndim != 2 or image.shape != nuclei.shape:
        raise ValueError(
            f"cell channel {image.shape} and nuclei labels {nuclei.shape} must be the same 2-D shape"
        )
    markers = nuclei.astype(np.int32)
    if not markers.any():
        return markers
    mask = cell_foreground(image, sigma, threshold) | (markers > 0)
    bodies = watershed(sobel(_smoothed(image, sigma)), markers, mask=mask)  # (H, W)
    return bodies.astype(np.int32)
