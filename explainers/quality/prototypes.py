"""Prototype diversity for prototype models (ProtoPNet and its mask-aware variant).

Prototypes that collapse onto the same vector explain nothing new; duplicates are flagged so the
leaderboard can show how many distinct prototypes a model really uses.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import pdist, squareform

from ._common import to_numpy

__all__ = ["prototype_diversity"]


def prototype_diversity(
    prototypes: Any, threshold: float = 1e-3, metric: str = "euclidean"
) -> dict[str, Any]:
    """Pairwise distances between prototypes, with near-duplicates flagged.

    Args:
        prototypes: ``(P, D)`` vectors, or ``(P, D, 1, 1)`` / any ``(P, ...)`` (flattened).
        threshold: Pairs closer than this (strictly) are duplicates.
        metric: Any ``scipy.spatial.distance.pdist`` metric, e.g. ``"euclidean"`` or
            ``"cosine"``.

    Returns:
        ``distances`` ``(P, P)``; ``duplicate_pairs`` (list of ``(i, j)`` with ``i < j``);
        ``n_duplicate_pairs``; ``duplicated`` (sorted indices in any duplicate pair);
        ``n_distinct`` (number of groups once duplicates are merged, transitively);
        ``min_distance`` and ``mean_distance`` over all pairs.
    """
    p = to_numpy(prototypes)
    if p.ndim < 2 or p.shape[0] < 2:
        raise ValueError(f"need at least 2 prototypes as (P, D), got shape {p.shape}")
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold!r}")
    p = p.reshape(p.shape[0], -1)
    try:
        condensed = pdist(p, metric=metric)
    except ValueError as e:
        raise ValueError(f"unknown or unusable metric {metric!r}: {e}") from e
    dist = squareform(condensed)
    i, j = np.triu_indices(len(p), k=1)
    dup = condensed < threshold
    pairs = [(int(a), int(b)) for a, b in zip(i[dup], j[dup])]
    adjacency = np.zeros_like(dist, dtype=bool)
    adjacency[i[dup], j[dup]] = True
    n_distinct, _ = connected_components(adjacency, directed=False)
    return {
        "distances": dist,
        "duplicate_pairs": pairs,
        "n_duplicate_pairs": len(pairs),
        "duplicated": sorted({k for pair in pairs for k in pair}),
        "n_distinct": int(n_distinct),
        "min_distance": float(condensed.min()),
        "mean_distance": float(condensed.mean()),
    }
