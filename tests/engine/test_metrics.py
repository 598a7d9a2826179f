"""cytotune.engine.metrics against scikit-learn called directly, and hand-computed examples."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from cytotune.engine.metrics import (
    METRIC_DIRECTIONS,
    aggregate_groups,
    classification_metrics,
    group_metrics,
    mean_std,
    metric_direction,
    regression_metrics,
    scalar_metrics,
    thin_curve,
)
from sklearn import metrics as skm

SCALAR_KEYS = {
    "accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_micro",
    "f1_weighted", "precision_weighted", "recall_weighted", "auc_macro", "auc_micro",
    "auc_weighted", "auc_classes_present", "log_loss", "n",
}  # fmt: skip


def _fake_predictions(n: int, k: int, present: list[int], seed: int) -> tuple:
    """Labels drawn from ``present`` and informative but noisy probabilities."""
    rng = np.random.default_rng(seed)
    y = rng.choice(present, size=n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


def _sklearn_reference(y: np.ndarray, proba: np.ndarray, k: int) -> dict:
    pred = proba.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = {
            "accuracy": skm.accuracy_score(y, pred),
            "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
            "f1_micro": skm.f1_score(y, pred, average="micro"),
            "log_loss": skm.log_loss(y, proba, labels=list(range(k))),
        }
        for avg in ("macro", "weighted"):
            ref[f"precision_{avg}"] = skm.precision_score(y, pred, average=avg, zero_division=0)
            ref[f"recall_{avg}"] = skm.recall_score(y, pred, average=avg, zero_division=0)
            ref[f"f1_{avg}"] = skm.f1_score(y, pred, average=avg, zero_division=0)
        if k == 2:
            auc = skm.roc_auc_score(y, proba[:, 1])
            ref.update(auc_macro=auc, auc_micro=auc, auc_weighted=auc)
        else:
            present = np.unique(y)
            onehot = np.eye(k, dtype=int)[y]
            ref["auc_micro"] = skm.roc_auc_score(
                y, proba, multi_class="ovr", average="micro", labels=list(range(k))
            )
            # sklearn is undefined with absent classes: reference = per present class
            if len(present) == k:
                for avg in ("macro", "weighted"):
                    ref[f"auc_{avg}"] = skm.roc_auc_score(y, proba, multi_class="ovr", average=avg)
            else:
                ref["auc_macro"] = np.mean(
                    [skm.roc_auc_score(onehot[:, c], proba[:, c]) for c in present]
                )
                ref["auc_weighted"] = np.average(
                    [skm.roc_auc_score(onehot[:, c], proba[:, c]) for c in present],
                    weights=[(y == c).sum() for c in present],
                )
    return ref


@pytest.mark.parametrize(
    ("k", "present", "n"),
    [(2, [0, 1], 200), (3, [0, 1, 2], 300), (16, [0, 1, 2, 3, 5, 8, 9, 12, 15], 400)],
    ids=["binary", "3-class", "16-class-absent"],
)
def test_classification_matches_sklearn(k, present, n):
    y, proba = _fake_predictions(n, k, present, seed=k)
    classes = [f"c{i}" for i in range(k)]
    out = classification_metrics(y, proba, classes)
    ref = _sklearn_reference(y, proba, k)
    assert SCALAR_KEYS <= set(out)
    for key, value in ref.items():
        assert out[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert out["n"] == n
    assert out["auc_classes_present"] == len(present)
    cm = skm.confusion_matrix(y, proba.argmax(axis=1), labels=list(range(k)))
    assert out["confusion_matrix"] == cm.tolist()
    assert len(out["confusion_matrix"]) == k
    assert all(len(r) == k for r in out["confusion_matrix"])
    assert set(out["roc"]) == {classes[c] for c in present}
    for c in present:
        full = skm.roc_auc_score(y == c, proba[:, c])
        assert out["roc"][classes[c]]["auc"] == pytest.approx(full)
    json.dumps(out)  # plain Python types throughout


def test_classes_never_predicted_give_zero_not_error():
    y = np.array([0, 1, 2, 2])
    proba = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.0, 0.3, 0.7]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our wrapper must not leak sklearn warnings
        out = classification_metrics(y, proba, ["a", "b", "c"])
    assert out["accuracy"] == pytest.approx(0.5)
    assert out["precision_macro"] == pytest.approx(
        skm.precision_score(y, proba.argmax(1), average="macro", zero_division=0)
    )


def test_confusion_matrix_by_hand():
    y = np.array([0, 0, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 2, 0, 2])
    proba = np.eye(4)[pred] * 0.7 + 0.075  # rows sum to 1; class 3 never appears
    out = classification_metrics(y, proba, ["a", "b", "c", "d"])
    assert out["confusion_matrix"] == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)


def test_probabilities_are_renormalised():
    y, proba = _fake_predictions(50, 3, [0, 1, 2], seed=1)
    a = classification_metrics(y, proba, ["a", "b", "c"])
    b = classification_metrics(y, proba * np.linspace(0.5, 3, 50)[:, None], ["a", "b", "c"])
    assert scalar_metrics(a) == pytest.approx(scalar_metrics(b))


def test_single_class_present():
    y = np.zeros(10, dtype=int)
    proba = np.random.default_rng(0).dirichlet(np.ones(2), size=10)
    out = classification_metrics(y, proba, ["neg", "pos"])
    assert math.isnan(out["auc_macro"])
    assert math.isnan(out["auc_micro"])
    assert out["auc_classes_present"] == 1
    assert out["roc"] == {}
    assert out["accuracy"] == pytest.approx(np.mean(proba.argmax(1) == 0))
    out3 = classification_metrics(y, np.random.default_rng(1).dirichlet(np.ones(3), 10), "abc")
    assert math.isnan(out3["auc_macro"])
    assert math.isnan(out3["auc_weighted"])
    assert math.isfinite(out3["auc_micro"])


@pytest.mark.parametrize(
    ("y", "proba", "match"),
    [
        (np.array([0, 1]), np.array([[0.5, 0.5]]), "shape"),
        (np.array([0, 1]), np.array([[0.5, np.nan], [0.5, 0.5]]), "NaN"),
        (np.array([0, 1]), np.array([[1.5, -0.5], [0.5, 0.5]]), "negative"),
        (np.array([0, 3]), np.array([[0.5, 0.5], [0.5, 0.5]]), "outside"),
        (np.array([0, 1]), np.array([[0.0, 0.0], [0.5, 0.5]]), "sum to 0"),
        (np.array(["a", "b"]), np.array([[0.5, 0.5], [0.5, 0.5]]), "integer"),
    ],
)
def test_classification_errors(y, proba, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y, proba, ["a", "b"])


def test_roc_thinning():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 5000)
    score = y + rng.normal(scale=1.5, size=5000)
    fpr, tpr, _ = skm.roc_curve(y, score)
    assert len(fpr) > 500
    f, t = thin_curve(fpr, tpr)
    assert 50 < len(f) <= 101
    assert (f[0], t[0], f[-1], t[-1]) == (fpr[0], tpr[0], fpr[-1], tpr[-1])
    assert np.all(np.diff(f) >= 0)
    assert np.all(np.diff(t) >= 0)
    assert skm.auc(f, t) == pytest.approx(skm.auc(fpr, tpr), abs=2e-3)
    out = classification_metrics(
        y, np.c_[1 - 1 / (1 + np.exp(-score)), 1 / (1 + np.exp(-score))], "ab"
    )
    curve = out["roc"]["b"]
    assert len(curve["fpr"]) <= 101
    assert curve["fpr"][0] == 0.0
    assert curve["tpr"][-1] == 1.0
    assert curve["auc"] == pytest.approx(skm.roc_auc_score(y, score))


def test_regression_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(80, 3)) * [1, 10, 0.1]
    pred = y + rng.normal(size=(80, 3)) * [0.5, 3, 0.2]
    names = ["area", "intensity", "ratio"]
    out = regression_metrics(y, pred, names)
    for t, name in enumerate(names):
        assert out[f"r2/{name}"] == pytest.approx(skm.r2_score(y[:, t], pred[:, t]))
        assert out[f"mse/{name}"] == pytest.approx(skm.mean_squared_error(y[:, t], pred[:, t]))
        assert out[f"mae/{name}"] == pytest.approx(skm.mean_absolute_error(y[:, t], pred[:, t]))
    assert out["r2"] == pytest.approx(skm.r2_score(y, pred, multioutput="uniform_average"))
    assert out["mse"] == pytest.approx(skm.mean_squared_error(y, pred))
    assert out["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert out["n"] == 80
    one = regression_metrics(y[:, 0], pred[:, 0], ["area"])
    assert one["r2"] == pytest.approx(out["r2/area"])


def test_regression_errors():
    y = np.zeros((4, 2))
    with pytest.raises(ValueError, match="same shape|one shape"):
        regression_metrics(y, np.zeros((4, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="target_names has 1"):
        regression_metrics(y, y, ["a"])
    with pytest.raises(ValueError, match="NaN"):
        regression_metrics(y, np.full((4, 2), np.nan), ["a", "b"])


def test_aggregate_groups_and_well_accuracy_by_hand():
    groups = np.array(["A1", "A1", "A1", "B2", "B2", "C3"])
    y = np.array([1, 1, 0, 0, 0, 1])
    proba = np.array([[0.2, 0.8], [0.6, 0.4], [0.4, 0.6], [0.3, 0.7], [0.9, 0.1], [0.7, 0.3]])
    ids, y_g, s_g, purity = aggregate_groups(groups, y, proba)
    assert ids.tolist() == ["A1", "B2", "C3"]
    assert y_g.tolist() == [1, 0, 1]
    np.testing.assert_allclose(s_g, [[0.4, 0.6], [0.6, 0.4], [0.7, 0.3]])
    np.testing.assert_allclose(purity, [2 / 3, 1, 1])
    # well predictions: A1 -> 1 (right), B2 -> 0 (right), C3 -> 0 (wrong)
    out = group_metrics(groups, y, proba, ["neg", "pos"], "classification")
    assert out["well/accuracy"] == pytest.approx(2 / 3)
    assert out["well/n"] == 3
    assert out["well/purity_min"] == pytest.approx(2 / 3)
    assert out["well/confusion_matrix"] == [[1, 0], [1, 1]]
    assert "plate/accuracy" in group_metrics(groups, y, proba, "ab", "classification", "plate/")


def test_group_metrics_regression():
    groups = np.array(["w1", "w1", "w2", "w2"])
    y = np.array([[1.0], [1.0], [3.0], [3.0]])
    pred = np.array([[0.0], [2.0], [2.0], [3.0]])
    out = group_metrics(groups, y, pred, ["dose"], "regression")
    # well means: pred 1.0 and 2.5 vs true 1.0 and 3.0
    assert out["well/mse/dose"] == pytest.approx(0.125)
    assert out["well/mae"] == pytest.approx(0.25)
    assert out["well/purity_mean"] == 1.0
    with pytest.raises(ValueError, match="same first dimension"):
        aggregate_groups(groups[:3], y, pred)


def test_scalar_metrics_and_mean_std():
    y, proba = _fake_predictions(60, 3, [0, 1, 2], seed=5)
    out = classification_metrics(y, proba, ["a", "b", "c"])
    sc = scalar_metrics({**out, "bad": float("inf"), "flag": True, "name": "x"})
    assert set(sc) == SCALAR_KEYS
    assert all(isinstance(v, float) for v in sc.values())
    folds = [{"accuracy": 0.5, "mse": 2.0, "roc": {}}, {"accuracy": 0.7, "mse": 1.0},
             {"accuracy": 0.9, "mse": 4.0, "only_here": 1.0}]  # fmt: skip
    ms = mean_std(folds)
    assert set(ms) == {"accuracy", "accuracy_std", "mse", "mse_std"}
    assert ms["accuracy"] == pytest.approx(np.mean([0.5, 0.7, 0.9]))
    assert ms["accuracy_std"] == pytest.approx(np.std([0.5, 0.7, 0.9], ddof=1))
    assert ms["mse_std"] == pytest.approx(np.std([2.0, 1.0, 4.0], ddof=1))
    assert mean_std(folds[:1]) == {"accuracy": 0.5, "accuracy_std": 0.0, "mse": 2.0, "mse_std": 0.0}
    with pytest.raises(ValueError, match="empty"):
        mean_std([])


@pytest.mark.parametrize(
    ("name", "direction"),
    [
        ("accuracy", "max"), ("log_loss", "min"), ("loss", "min"), ("val/loss", "min"),
        ("well/auc_macro", "max"), ("val/well/f1_macro", "max"), ("r2/area", "max"),
        ("well/mse/area", "min"), ("mae", "min"), ("val/accuracy_std", "min"),
        ("well/purity_min", "max"),
    ],
)  # fmt: skip
def test_metric_direction(name, direction):
    assert metric_direction(name) == direction


def test_metric_direction_unknown_and_table_complete():
    with pytest.raises(ValueError, match="accurcy.*accuracy"):
        metric_direction("val/accurcy")
    with pytest.raises(ValueError, match="unknown metric"):
        metric_direction("accuracy/extra")
    assert set(METRIC_DIRECTIONS.values()) == {"max", "min"}
    assert SCALAR_KEYS <= set(METRIC_DIRECTIONS)
