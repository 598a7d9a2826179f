"""Paired tests against hand computation and scipy; corrections against hand-worked values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cytotune.dashboard import stats
from scipy import stats as sps


def test_nadeau_bengio_matches_the_formula_by_hand():
    a = [0.91, 0.88, 0.93, 0.90, 0.87]
    b = [0.85, 0.86, 0.88, 0.89, 0.80]
    d = [x - y for x, y in zip(a, b)]  # 0.06, 0.02, 0.05, 0.01, 0.07
    mean = sum(d) / 5
    var = sum((x - mean) ** 2 for x in d) / 4
    ratio = 1 / 4  # 5-fold CV: n_test / n_train
    t = mean / math.sqrt((1 / 5 + ratio) * var)
    p = 2 * sps.t.sf(abs(t), 4)
    got = stats.nadeau_bengio(a, b, ratio)
    assert got[0] == pytest.approx(mean)
    assert got[1] == pytest.approx(t)
    assert got[2] == pytest.approx(p)
    assert got[0] == pytest.approx(0.042)
    assert got[1] == pytest.approx(2.4188, abs=1e-4)  # 0.042 / sqrt(0.45 * 0.00067)


def test_nadeau_bengio_is_more_conservative_than_the_plain_paired_t_test():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.8, 0.9, 10)
    b = a - rng.uniform(0.0, 0.02, 10)
    plain = sps.ttest_rel(a, b)
    _, t, p = stats.nadeau_bengio(a, b, 1 / 9)
    # with no correction (ratio -> 0) it is exactly scipy's paired t-test
    _, t0, p0 = stats.nadeau_bengio(a, b, 1e-300)
    assert t0 == pytest.approx(plain.statistic)
    assert p0 == pytest.approx(plain.pvalue)
    assert abs(t) < abs(plain.statistic)
    assert p > plain.pvalue


def test_nadeau_bengio_edge_cases():
    assert stats.nadeau_bengio([0.5, 0.6], [0.5, 0.6], 0.5)[2] == 1.0
    mean, t, p = stats.nadeau_bengio([0.6, 0.7], [0.5, 0.6], 0.5)
    assert mean == pytest.approx(0.1)
    assert math.isinf(t)
    assert p == 0.0
    assert math.isnan(stats.nadeau_bengio([0.5], [0.4], 0.5)[2])
    with pytest.raises(ValueError, match="aligned"):
        stats.nadeau_bengio([0.5, 0.6], [0.4], 0.5)


@pytest.mark.parametrize("seed", range(5))
def test_wilcoxon_matches_scipy_exact(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 12))
    a, b = rng.normal(0, 1, n), rng.normal(0.3, 1, n)
    w, p = stats.wilcoxon_exact(a, b)
    ref = sps.wilcoxon(a, b, method="exact")
    assert w == pytest.approx(ref.statistic)
    assert p == pytest.approx(ref.pvalue)


def test_wilcoxon_three_folds_and_zero_differences():
    # all three differences positive: the smallest possible two-sided p with n = 3 is 2/8
    assert stats.wilcoxon_exact([3, 4, 5], [1, 1, 1]) == (0.0, 0.25)
    w, p = stats.wilcoxon_exact([1, 2, 3], [1, 2, 3])
    assert math.isnan(w)
    assert math.isnan(p)
    # large n: normal approximation close to scipy's
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 30), rng.normal(0.2, 1, 30)
    ref = sps.wilcoxon(a, b, method="approx", correction=False)
    assert stats.wilcoxon_exact(a, b)[1] == pytest.approx(ref.pvalue, rel=1e-6)


def test_holm_and_bonferroni_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 -> 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.bonferroni(p) == pytest.approx([0.04, 0.16, 0.12, 0.02])
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    got = stats.holm([0.01, float("nan"), 0.02])  # NaN is not a test
    assert got[0] == pytest.approx(0.02)
    assert math.isnan(got[1])
    assert got[2] == pytest.approx(0.02)


def test_paired_table_uses_shared_folds_and_corrects_over_rows():
    scores = {
        "A": {0: 0.9, 1: 0.92, 2: 0.91, 3: 0.93},
        "B": {0: 0.8, 1: 0.85, 2: 0.82, 3: 0.84},
        "C": {1: 0.7, 2: 0.75, 3: 0.72},  # fold 0 missing
    }
    rows = stats.paired_table(scores, test_train_ratio=1 / 3)
    assert [(r["a"], r["b"], r["folds"]) for r in rows] == [
        ("A", "B", 4),
        ("A", "C", 3),
        ("B", "C", 3),
    ]
    ac = rows[1]
    expected = stats.nadeau_bengio([0.92, 0.91, 0.93], [0.7, 0.75, 0.72], 1 / 3)
    assert ac["t"] == pytest.approx(expected[1])
    assert ac["p_nb"] == pytest.approx(expected[2])
    raw = [r["p_nb"] for r in rows]
    assert [r["p_nb_holm"] for r in rows] == pytest.approx(stats.holm(raw))
    assert [r["p_nb_bonferroni"] for r in rows] == pytest.approx([min(1, 3 * x) for x in raw])


def test_dashboard_ranks_like_the_engine_full_fidelity_first():
    """One ranking (issue 13/17): a trial raced out after one fold with a higher score ranks
    below every trial scored on all folds, in the dashboard as in ``cytotune pull --rank``."""
    import pandas as pd
    from cytotune.dashboard.data import _prepare_trials

    trials = pd.DataFrame(
        {
            "trial_id": ["raced", "full_b", "full_a", "running"],
            "status": ["pruned", "completed", "completed", "running"],
            "val/f1_weighted": [0.95, 0.80, 0.85, None],
            "params": ["{}"] * 4,
        }
    )
    ranks = _prepare_trials(trials, "f1_weighted", "max").set_index("trial_id")["rank"]
    assert ranks.loc[["full_a", "full_b", "raced"]].tolist() == [1, 2, 3]
    assert pd.isna(ranks["running"])
