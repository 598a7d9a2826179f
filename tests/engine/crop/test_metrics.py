"""Detection scores against hand-computed cases and a brute-force IoU."""

from __future__ import annotations

import numpy as np
import pytest
from cytotune.engine.crop.metrics import iou_matrix, score_field, score_fields, summarise


def square(shape, y, x, side, value=1, out=None):
    out = np.zeros(shape, dtype=np.int32) if out is None else out
    out[y : y + side, x : x + side] = value
    return out


def test_identical_fields_score_one():
    truth = square((40, 40), 2, 2, 10, 1)
    square((40, 40), 20, 20, 8, 7, out=truth)
    s = score_field(truth, truth)
    assert s.tp == (2,) * 10
    assert s.average_precision() == 1.0
    assert score_fields([truth], [truth])["f1"] == 1.0


def test_shifted_square_matches_at_four_thresholds():
    # 10x10 square shifted by 2 columns: intersection 80, union 120, IoU 2/3.
    truth = square((30, 30), 5, 5, 10)
    pred = square((30, 30), 5, 7, 10)
    assert iou_matrix(truth, pred)[0, 0] == pytest.approx(80 / 120)
    s = score_field(truth, pred)
    # IoU 0.667 > 0.5, 0.55, 0.6, 0.65 only; matched -> 1/(1+0+0), unmatched -> 0/(0+1+1).
    assert s.tp == (1, 1, 1, 1, 0, 0, 0, 0, 0, 0)
    assert s.average_precision() == pytest.approx(0.4)


def test_missed_and_spurious_objects():
    truth = square((50, 50), 0, 0, 10, 1)
    square((50, 50), 30, 30, 10, 2, out=truth)  # missed
    pred = square((50, 50), 0, 0, 10, 5)  # exact match
    square((50, 50), 30, 0, 6, 9, out=pred)  # spurious
    s = score_field(truth, pred)
    assert (s.n_true, s.n_pred) == (2, 2)
    # Every threshold: TP 1, FP 1, FN 1 -> 1/3.
    assert s.average_precision() == pytest.approx(1 / 3)
    summary = summarise([s])
    assert summary["precision"] == summary["recall"] == summary["f1"] == pytest.approx(0.5)


def test_pooled_scores_over_two_fields():
    a = square((20, 20), 0, 0, 5)
    b = np.zeros((20, 20), dtype=np.int32)
    # Field 1: one truth found. Field 2: no truth, two predictions.
    pred_b = square((20, 20), 0, 0, 3, 1)
    square((20, 20), 10, 10, 3, 2, out=pred_b)
    out = score_fields([a, b], [a, pred_b])
    assert out["precision"] == pytest.approx(1 / 3)
    assert out["recall"] == 1.0
    assert out["f1"] == pytest.approx(2 * 1 / (1 + 3))
    assert out["map"] == pytest.approx((1.0 + 0.0) / 2)


def test_empty_fields():
    empty = np.zeros((8, 8), dtype=np.int32)
    assert score_field(empty, empty).average_precision() == 1.0
    assert score_field(square((8, 8), 0, 0, 3), empty).average_precision() == 0.0


def test_iou_matrix_matches_brute_force():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 6, (30, 30))
    pred = rng.integers(0, 4, (30, 30)) * 3  # non-contiguous ids
    got = iou_matrix(truth, pred)
    t_ids, p_ids = np.unique(truth)[1:], np.unique(pred)[1:]
    for i, a in enumerate(t_ids):
        for j, b in enumerate(p_ids):
            ma, mb = truth == a, pred == b
            assert got[i, j] == pytest.approx((ma & mb).sum() / (ma | mb).sum())


def test_rejects_low_thresholds_and_shape_mismatch():
    with pytest.raises(ValueError, match="0.5"):
        score_field(np.zeros((4, 4)), np.zeros((4, 4)), thresholds=[0.3])
    with pytest.raises(ValueError, match="shape"):
        iou_matrix(np.zeros((4, 4)), np.zeros((5, 4)))
