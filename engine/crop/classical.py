"""The classical finder: no training, scikit-image only.

Percentile stretch -> Gaussian smoothing -> Otsu threshold (dark-on-bright fields are inverted
when the "foreground" would cover most of the field) -> fill holes, drop specks -> distance
transform -> one marker per local maximum of the smoothed distance, at least ``min_distance``
pixels apart -> watershed on the inverted distance, inside the foreground, so touching nuclei
are split along their neck.
"""

from __future__ import annotations

import numpy as np

from .finders import Finder, normalise, register_finder


def _check(name: str, value, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ValueError(f"classical finder: {name}={value!r} must be a number in [{lo}, {hi}]")
    return value


@register_finder("classical")
class ClassicalFinder(Finder):
    """Smoothing, Otsu threshold and distance-transform watershed.

    Args:
        sigma: Gaussian smoothing of the stretched field, in pixels.
        min_distance: smallest distance between two nucleus centres (watershed markers), pixels.
        min_area: connected foreground pieces smaller than this (pixels) are noise, not cells.
        distance_sigma: smoothing of the distance map before its maxima are taken (fewer splits
            of elongated nuclei).
        invert: "auto" (dark objects when the thresholded area exceeds half the field), "never"
            or "always".
        split: run the watershed (False: every connected component is one cell).
    """

    def __init__(
        self,
        sigma: float = 1.0,
        min_distance: int = 5,
        min_area: int = 8,
        distance_sigma: float = 1.5,
        invert: str = "auto",
        split: bool = True,
    ) -> None:
        self.sigma = _check("sigma", sigma, 0, 50)
        self.min_distance = int(_check("min_distance", min_distance, 1, 500))
        self.min_area = int(_check("min_area", min_area, 0, 10**7))
        self.distance_sigma = _check("distance_sigma", distance_sigma, 0, 50)
        if invert not in ("auto", "never", "always"):
            raise ValueError(f"classical finder: invert={invert!r} must be auto, never or always")
        self.invert = invert
        self.split = bool(split)

    def describe(self) -> dict:
        keys = ("sigma", "min_distance", "min_area", "distance_sigma", "invert", "split")
        return {"finder": self.name, **{k: getattr(self, k) for k in keys}}

    def foreground(self, image: np.ndarray) -> np.ndarray:
        """Boolean (H, W) mask of cell pixels."""
        from scipy import ndimage as ndi
        from skimage.filters import gaussian, threshold_otsu
        from skimage.morphology import remove_small_objects

        x = normalise(image)
        if self.sigma > 0:
            x = gaussian(x, sigma=self.sigma, preserve_range=True)
        if x.max() <= x.min():
            return np.zeros(x.shape, dtype=bool)
        fg = x > threshold_otsu(x)
        if self.invert == "always" or (self.invert == "auto" and fg.mean() > 0.5):
            fg = ~fg
        fg = ndi.binary_fill_holes(fg)
        if self.min_area > 1:
            fg = remove_small_objects(fg, max_size=self.min_area - 1)
        return fg

    def find(self, image: np.ndarray) -> np.ndarray:
        from scipy import ndimage as ndi
        from skimage.feature import peak_local_max
        from skimage.segmentation import watershed

        image = np.asarray(image)
        if image.ndim != 2:
            raise ValueError(f"a finder takes one 2-D channel, got shape {image.shape}")
        fg = self.foreground(image)
        components, n = ndi.label(fg)
        if n == 0 or not self.split:
            return components.astype(np.int32)
        distance = ndi.distance_transform_edt(fg)
        if self.distance_sigma > 0:
            distance = ndi.gaussian_filter(distance, self.distance_sigma)
        peaks = peak_local_max(
            distance, min_distance=self.min_distance, labels=components, exclude_border=False
        )
        markers = np.zeros(fg.shape, dtype=np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        # A component without a maximum (flat, tiny) still gets its own marker.
        unmarked = np.setdiff1d(np.arange(1, n + 1), components[tuple(peaks.T)])
        if len(unmarked):
            centres = ndi.maximum_position(distance, components, unmarked)
            for k, (y, x) in enumerate(centres):
                markers[y, x] = len(peaks) + 1 + k
        labels = watershed(-distance, markers, mask=fg)
        return _compact(labels)


def _compact(labels: np.ndarray) -> np.ndarray:
    """Renumber labels to 1..N in order of first appearance (no gaps)."""
    ids, inverse = np.unique(labels, return_inverse=True)
    out = inverse.reshape(labels.shape).astype(np.int32)
    return out if ids[0] == 0 else out + 1
