"""Population maps: streaming weighted geometric means and patch-wise correlation.

The seed paper's global method summarises a class by the weighted geometric mean of all its cell
images (Gmean-Shape) and of their Grad-CAMs (Gmean-GradCam), then compares the two with a
patch-wise Pearson correlation map. Everything here is numpy (float64) and streams over batches,
so a whole dataset never needs to fit in memory; accumulators from several workers combine with
:meth:`GeometricMeanAccumulator.merge`.

Example:
    >>> acc = PerClassGeometricMean(["normal", "metastatic"], shape=(1, 64, 64))
    >>> for images, labels in batches:  # doctest: +SKIP
    ...     acc.update(cam(images), labels)
    >>> maps = acc.results()  # {"normal": (1, 64, 64), "metastatic": (1, 64, 64)}
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "GeometricMeanAccumulator",
    "PerClassGeometricMean",
    "channel_maps",
    "compare_population_maps",
    "correlation_summary",
    "patch_correlation",
]


def _to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` (numpy array, torch tensor or sequence) as a float64 numpy array."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().double().numpy()  # bfloat16/float16 have no numpy view
    return np.asarray(x, dtype=np.float64)


class GeometricMeanAccumulator:
    """Streaming weighted geometric mean of non-negative maps of a fixed shape.

    Accumulates ``sum_i w_i * log(x_i + eps)`` and ``sum_i w_i`` in float64, so the result,
    ``exp(sum / W) - eps``, does not depend on how the samples are split into batches.

    ``eps`` stabilises the logarithm: a single zero pixel would otherwise force the geometric
    mean of that pixel to zero (``log 0 = -inf``). It is added before the log and subtracted
    after the exp, so constant inputs come back exactly (up to rounding) and a pixel that is zero
    in every sample stays zero. Pick ``eps`` well below the typical signal (images scaled to
    [0, 1] and ReLU'd CAMs: the default 1e-6 is fine); larger ``eps`` pulls the result towards
    the arithmetic mean.

    Args:
        shape: Shape of one map, e.g. ``(C, H, W)`` or ``(H, W)``.
        eps: Positive stabiliser added inside the logarithm.
    """

    def __init__(self, shape: Sequence[int], eps: float = 1e-6) -> None:
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}; use e.g. 1e-6")
        self.shape = tuple(int(s) for s in shape)
        self.eps = float(eps)
        self.log_sum = np.zeros(self.shape, dtype=np.float64)
        self.weight_sum = 0.0
        self.count = 0

    def update(self, maps: Any, weights: Any = None) -> None:
        """Add a batch of maps.

        Args:
            maps: Array or tensor of shape ``(B, *shape)``, all values >= 0 (clamp CAMs with
                ReLU first).
            weights: Optional non-negative per-sample weights of shape ``(B,)``; default 1.

        Raises:
            ValueError: On a wrong shape, negative or non-finite values, or bad weights.
        """
        maps = _to_numpy(maps)
        if maps.shape[1:] != self.shape:
            raise ValueError(
                f"maps have shape {maps.shape}, expected (B, {', '.join(map(str, self.shape))})"
            )
        if not np.isfinite(maps).all():
            raise ValueError("maps contain NaN or inf; clean them before accumulating")
        if maps.size and maps.min() < 0:
            raise ValueError(
                f"maps must be non-negative for a geometric mean (min {maps.min():.3g}); "
                "clamp them first, e.g. maps.clamp(min=0) for Grad-CAMs"
            )
        w = _check_weights(weights, len(maps))
        logs = np.log(maps + self.eps)  # (B, *shape)
        # w @ logs as one matrix product: the same numbers as np.tensordot(w, logs, (0, 0)),
        # 5x faster (tensordot's reshapes were a fifth of the population stage's time)
        flat = logs.reshape(len(logs), int(np.prod(self.shape, dtype=np.int64)))
        self.log_sum += (w @ flat).reshape(self.shape)
        self.weight_sum += float(w.sum())
        self.count += len(maps)

    def merge(self, other: GeometricMeanAccumulator) -> GeometricMeanAccumulator:
        """Add another accumulator's state into this one (e.g. from another worker)."""
        if other.shape != self.shape or other.eps != self.eps:
            raise ValueError(
                f"cannot merge accumulators with shape/eps {other.shape}/{other.eps} into "
                f"{self.shape}/{self.eps}; build both with the same shape and eps"
            )
        self.log_sum += other.log_sum
        self.weight_sum += other.weight_sum
        self.count += other.count
        return self

    def result(self) -> np.ndarray:
        """The weighted geometric mean ``exp(sum(w log(x + eps)) / sum(w)) - eps``.

        Raises:
            ValueError: If no weight has been accumulated yet.
        """
        if self.weight_sum <= 0:
            raise ValueError("no samples (or only zero weights) accumulated; call update() first")
        return np.exp(self.log_sum / self.weight_sum) - self.eps


def _check_weights(weights: Any, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n, dtype=np.float64)
    w = _to_numpy(weights).reshape(-1)
    if w.shape != (n,):
        raise ValueError(f"weights have shape {w.shape}, expected ({n},), one per sample")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and non-negative")
    return w


class PerClassGeometricMean:
    """One :class:`GeometricMeanAccumulator` per class.

    Args:
        classes: Class labels (names or ints); the ``labels`` given to :meth:`update` must be
            among them.
        shape: Shape of one map.
        eps: Stabiliser passed to every accumulator.
    """

    def __init__(self, classes: Sequence[Hashable], shape: Sequence[int], eps: float = 1e-6):
        if len(classes) == 0 or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be a non-empty list of unique labels, got {classes!r}")
        self.classes = list(classes)
        self.accumulators = {c: GeometricMeanAccumulator(shape, eps) for c in self.classes}

    def update(self, maps: Any, labels: Sequence[Hashable] | Any, weights: Any = None) -> None:
        """Route each map of the batch to its class accumulator.

        Args:
            maps: ``(B, *shape)`` non-negative maps.
            labels: ``(B,)`` class labels (list, numpy array or tensor).
            weights: Optional ``(B,)`` non-negative weights.
        """
        maps = _to_numpy(maps)
        if hasattr(labels, "detach"):
            labels = labels.detach().cpu().numpy()
        labels = np.asarray(labels)
        if labels.shape != (len(maps),):
            raise ValueError(f"labels have shape {labels.shape}, expected ({len(maps)},)")
        w = _check_weights(weights, len(maps))
        unknown = set(labels.tolist()) - set(self.classes)
        if unknown:
            raise ValueError(f"labels {sorted(map(str, unknown))} not in classes {self.classes}")
        for c in self.classes:
            sel = labels == c
            if sel.any():
                self.accumulators[c].update(maps[sel], w[sel])

    def merge(self, other: PerClassGeometricMean) -> PerClassGeometricMean:
        """Add another per-class accumulator (same classes) into this one."""
        if other.classes != self.classes:
            raise ValueError(f"classes differ: {other.classes} vs {self.classes}")
        for c in self.classes:
            self.accumulators[c].merge(other.accumulators[c])
        return self

    def result(self, cls: Hashable) -> np.ndarray:
        """Geometric mean of one class."""
        if cls not in self.accumulators:
            raise ValueError(f"unknown class {cls!r}; choose one of {self.classes}")
        return self.accumulators[cls].result()

    def results(self) -> dict[Hashable, np.ndarray]:
        """Geometric means of all classes that received a positive total weight."""
        return {c: a.result() for c, a in self.accumulators.items() if a.weight_sum > 0}


def channel_maps(images: Any, channels: Sequence[int] | None = None, combine: str = "stack"):
    """Pick the channels of ``(B, C, H, W)`` images that feed Gmean-Shape.

    Args:
        images: ``(B, C, H, W)`` non-negative images.
        channels: Channel indices to keep; ``None`` keeps all.
        combine: ``"stack"`` keeps them as separate channels (one Gmean per channel),
            ``"sum"`` adds them into one ``(B, 1, H, W)`` map.

    Returns:
        A float64 numpy array.
    """
    images = _to_numpy(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {images.shape}")
    if channels is not None:
        bad = [c for c in channels if not -images.shape[1] <= c < images.shape[1]]
        if bad:
            raise ValueError(f"channels {bad} out of range for {images.shape[1]} channels")
        images = images[:, list(channels)]
    if combine == "stack":
        return images
    if combine == "sum":
        return images.sum(axis=1, keepdims=True)
    raise ValueError(f"combine must be 'stack' or 'sum', got {combine!r}")


def _box_sum(x: np.ndarray, radius: int) -> np.ndarray:
    """Sum over the (2r+1)^2 window centred at each pixel of the last two axes, clipped."""
    k = np.ones(2 * radius + 1)
    out = ndimage.correlate1d(x, k, axis=-2, mode="constant", cval=0.0)
    return ndimage.correlate1d(out, k, axis=-1, mode="constant", cval=0.0)


def patch_correlation(a: Any, b: Any, radius: int = 2, rtol: float = 1e-10) -> np.ndarray:
    """Pearson correlation of ``a`` and ``b`` in a sliding window centred at each pixel.

    The window is ``(2 * radius + 1)`` pixels square; at the borders it is clipped to the image
    (no padding values enter the statistics), so every pixel's value equals
    ``scipy.stats.pearsonr`` on the pixels of its clipped window. Windows where ``a`` or ``b`` is
    constant (correlation undefined) give 0. "Constant" means a local variance below ``rtol``
    times the local mean of squares (after removing the global mean), which absorbs rounding.

    Window sums come from separable box filters, so the cost is O(radius) per pixel.

    Args:
        a: ``(..., H, W)`` map, e.g. Gmean-Shape.
        b: Map of the same shape, e.g. Gmean-GradCam.
        radius: Half-width of the window (default 2: a 5x5 window).
        rtol: Relative tolerance under which a window counts as constant.

    Returns:
        ``(..., H, W)`` float64 correlation map in [-1, 1].
    """
    a, b = _to_numpy(a), _to_numpy(b)
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"a and b must be (..., H, W) of the same shape, got {a.shape}, {b.shape}")
    if int(radius) != radius or radius < 0:
        raise ValueError(f"radius must be a non-negative int, got {radius!r}")
    radius = int(radius)
    # Centre globally: same correlations, much less cancellation in the moment formulas.
    a = a - a.mean(axis=(-2, -1), keepdims=True)
    b = b - b.mean(axis=(-2, -1), keepdims=True)
    n = _box_sum(np.ones(a.shape[-2:]), radius)  # (H, W) clipped window sizes
    ma, mb = _box_sum(a, radius) / n, _box_sum(b, radius) / n
    saa, sbb = _box_sum(a * a, radius) / n, _box_sum(b * b, radius) / n
    cov = _box_sum(a * b, radius) / n - ma * mb
    va, vb = saa - ma * ma, sbb - mb * mb
    valid = (va > rtol * saa) & (vb > rtol * sbb) & (va > 0) & (vb > 0)
    r = np.zeros(a.shape, dtype=np.float64)
    r[valid] = cov[valid] / np.sqrt(va[valid] * vb[valid])
    return np.clip(r, -1.0, 1.0)


def correlation_summary(r: Any, threshold: float = 0.5, mask: Any = None) -> dict[str, float]:
    """Share of strongly positively / negatively correlated pixels of a correlation map.

    Args:
        r: Correlation map, e.g. from :func:`patch_correlation`.
        threshold: A pixel counts when ``r > threshold`` (positive) or ``r < -threshold``
            (negative), i.e. ``|r| > threshold``.
        mask: Optional boolean map of the same shape; only pixels inside count.

    Returns:
        ``positive_ratio``, ``negative_ratio`` (shares of the counted pixels), ``mean_r`` and
        ``n_pixels``.
    """
    r = _to_numpy(r)
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    if mask is not None:
        mask = np.asarray(_to_numpy(mask) > 0)
        if mask.shape != r.shape:
            raise ValueError(f"mask shape {mask.shape} does not match r shape {r.shape}")
        r = r[mask]
    r = r.reshape(-1)
    if r.size == 0:
        raise ValueError("no pixels to summarise (empty map or empty mask)")
    return {
        "positive_ratio": float((r > threshold).mean()),
        "negative_ratio": float((r < -threshold).mean()),
        "mean_r": float(r.mean()),
        "n_pixels": int(r.size),
    }


def compare_population_maps(
    gmean_shape: Any,
    gmean_cam: Any,
    radius: int = 2,
    threshold: float = 0.5,
    mask: Any = None,
) -> dict[str, Any]:
    """Patch-correlation map between Gmean-Shape and Gmean-GradCam, with its summary.

    Args:
        gmean_shape: ``(H, W)`` population image (sum or pick channels first, see
            :func:`channel_maps`).
        gmean_cam: ``(H, W)`` population CAM at the same resolution.
        radius: Window half-width for :func:`patch_correlation`.
        threshold: ``|r|`` threshold for :func:`correlation_summary`.
        mask: Optional region to summarise over.

    Returns:
        ``{"r": (H, W) map, **correlation_summary(...)}``.
    """
    r = patch_correlation(gmean_shape, gmean_cam, radius=radius)
    return {"r": r, **correlation_summary(r, threshold=threshold, mask=mask)}
