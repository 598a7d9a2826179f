"""Paired tests over shared cross-validation folds, with multiple-comparison corrections.

Two trials evaluated on the same K folds give K paired scores. Their fold differences are not
independent (training sets overlap), so the plain paired t-test is too liberal; the Nadeau and
Bengio (2003) correction inflates the variance by ``n_test / n_train``. The Wilcoxon signed-rank
test is the rank-based check. With K folds the smallest two-sided Wilcoxon p is 2 / 2**K
(0.25 for K = 3), so it only speaks with many folds; the table says so.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats


def nadeau_bengio(
    a: Sequence[float], b: Sequence[float], test_train_ratio: float
) -> tuple[float, float, float]:
    """Corrected resampled paired t-test.

    Args:
        a, b: scores of two models on the same folds, in the same order.
        test_train_ratio: n_test / n_train of a fold (1 / (K - 1) for K-fold CV).

    Returns:
        (mean difference a - b, t statistic, two-sided p-value); NaNs with fewer than 2 folds.
    """
    d = np.asarray(a, float) - np.asarray(b, float)
    if d.shape != np.asarray(b, float).shape or d.ndim != 1:
        raise ValueError(f"a and b must be 1-D and aligned, got {np.shape(a)} and {np.shape(b)}")
    if test_train_ratio <= 0:
        raise ValueError(f"test_train_ratio must be > 0, got {test_train_ratio}")
    j = len(d)
    if j < 2:
        return (float(d.mean()) if j else math.nan, math.nan, math.nan)
    mean, var = float(d.mean()), float(d.var(ddof=1))
    if var == 0:
        return (
            mean,
            (0.0 if mean == 0 else math.copysign(math.inf, mean)),
            (1.0 if mean == 0 else 0.0),
        )
    t = mean / math.sqrt((1.0 / j + test_train_ratio) * var)
    return mean, t, float(2 * stats.t.sf(abs(t), j - 1))


def wilcoxon_exact(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Wilcoxon signed-rank test, two-sided, zero differences dropped.

    Exact over all 2**n sign patterns (average ranks for ties) up to n = 16 differences, the
    normal approximation above. Returns (W = the smaller rank sum, p); NaN with no non-zero
    difference.
    """
    d = np.asarray(a, float) - np.asarray(b, float)
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return math.nan, math.nan
    ranks = stats.rankdata(np.abs(d))
    w_plus = float(ranks[d > 0].sum())
    total = float(ranks.sum())
    w = min(w_plus, total - w_plus)
    if n <= 16:
        signs = np.array(list(itertools.product((0.0, 1.0), repeat=n)))  # (2**n, n)
        sums = signs @ ranks
        low = np.minimum(sums, total - sums)
        p = float(np.mean(low <= w + 1e-9))
        return w, min(1.0, p)
    mean, sd = total / 2, math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    z = (w - mean) / sd
    return w, float(min(1.0, 2 * stats.norm.cdf(z)))


def bonferroni(p: Sequence[float]) -> list[float]:
    """Bonferroni-adjusted p-values (NaNs stay NaN and do not count as tests)."""
    values = np.asarray(p, float)
    m = int(np.isfinite(values).sum())
    return [v if not np.isfinite(v) else min(1.0, v * m) for v in values]


def holm(p: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (NaNs stay NaN and do not count as tests)."""
    values = np.asarray(p, float)
    finite = np.flatnonzero(np.isfinite(values))
    m = len(finite)
    out = values.copy()
    running = 0.0
    for i, idx in enumerate(finite[np.argsort(values[finite], kind="stable")]):
        running = max(running, min(1.0, (m - i) * values[idx]))
        out[idx] = running
    return out.tolist()


def paired_table(
    scores: Mapping[str, Mapping[int, float]],
    pairs: Sequence[tuple[str, str]] | None = None,
    test_train_ratio: float = 0.25,
) -> list[dict]:
    """One row per pair of models over their shared folds, with corrected p-values.

    Args:
        scores: model name -> {fold: score}.
        pairs: which pairs to test (all pairs when None).
        test_train_ratio: n_test / n_train of a fold.

    Returns:
        rows with a, b, folds, mean_diff, t, p_nb, p_nb_holm, p_nb_bonferroni, w, p_wilcoxon,
        p_wilcoxon_holm, p_wilcoxon_bonferroni.
    """
    names = list(scores)
    pairs = list(pairs) if pairs is not None else list(itertools.combinations(names, 2))
    rows = []
    for a, b in pairs:
        shared = sorted(set(scores[a]) & set(scores[b]))
        x = [scores[a][f] for f in shared]
        y = [scores[b][f] for f in shared]
        keep = [i for i in range(len(shared)) if np.isfinite(x[i]) and np.isfinite(y[i])]
        x, y = [x[i] for i in keep], [y[i] for i in keep]
        mean, t, p = nadeau_bengio(x, y, test_train_ratio) if x else (math.nan,) * 3
        w, pw = wilcoxon_exact(x, y) if x else (math.nan, math.nan)
        rows.append(
            {
                "a": a,
                "b": b,
                "folds": len(x),
                "mean_diff": mean,
                "t": t,
                "p_nb": p,
                "w": w,
                "p_wilcoxon": pw,
            }
        )
    for key in ("p_nb", "p_wilcoxon"):
        values = [r[key] for r in rows]
        for row, h, bf in zip(rows, holm(values), bonferroni(values)):
            row[f"{key}_holm"], row[f"{key}_bonferroni"] = h, bf
    return rows
