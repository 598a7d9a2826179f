"""The JSON-valued cells of the results tables (a fold's confusion matrix and ROC curves, also at
well level) have one decoder, tables.decode_cell: written by the study recorder, read back by the
store, compared against scikit-learn on the same labels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from cytotune.engine.metrics import classification_metrics, group_metrics
from cytotune.engine.search import tables
from cytotune.engine.search.recorder import StudyRecorder
from cytotune.engine.search.store import StudyStore
from sklearn import metrics as skm

CLASSES = ["a", "b", "c"]
# fold 0: three wells of three cells, one class each; fold 1: six cells, one well each
Y_TRUE = (np.array([0, 0, 0, 1, 1, 1, 2, 2, 2]), np.array([0, 1, 2, 2, 1, 0]))
Y_PRED = (np.array([0, 0, 1, 1, 1, 2, 2, 2, 0]), np.array([0, 1, 2, 1, 1, 0]))
WELLS = (np.repeat(["w0", "w1", "w2"], 3), np.array(["v0", "v1", "v2", "v3", "v4", "v5"]))
# counted by hand from Y_TRUE and Y_PRED (rows true, columns predicted)
HAND = ([[2, 1, 0], [0, 2, 1], [1, 0, 2]], [[2, 0, 0], [0, 2, 0], [0, 1, 1]])


def _proba(y_pred: np.ndarray) -> np.ndarray:
    """(N, 3) probabilities whose argmax is ``y_pred``, each cell a little more confident."""
    n = len(y_pred)
    top = 0.6 + 0.03 * np.arange(n)
    proba = np.repeat(((1 - top) / 2)[:, None], 3, axis=1)
    proba[np.arange(n), y_pred] = top
    return proba


def _recorded_folds(tmp_path) -> pd.DataFrame:
    store = StudyStore(str(tmp_path / "study"))
    recorder = StudyRecorder(store, k=2, max_epochs=1, flush_every_s=float("inf"))
    recorder.started("t1", {"family": "backbone", "backbone": {}, "train": {"lr": 0.01}})
    recorder.reported("t1", {"epoch": 1, "val/accuracy": 0.7, "train_loss": 0.5})
    details = [
        {
            "fold": f,
            "epoch": 1,
            "n_val": len(Y_TRUE[f]),
            **classification_metrics(Y_TRUE[f], _proba(Y_PRED[f]), CLASSES),
            **group_metrics(WELLS[f], Y_TRUE[f], _proba(Y_PRED[f]), CLASSES, "classification"),
        }
        for f in range(2)
    ]
    recorder.completed("t1", checkpoint=str(tmp_path / "ckpt"), fold_details=details)
    return StudyStore(store.uri).table("folds").sort_values("fold").reset_index(drop=True)


def test_confusion_matrices_read_back_as_counted(tmp_path):
    folds = _recorded_folds(tmp_path)
    for f in range(2):
        cell = folds.loc[f, "confusion_matrix"]
        assert isinstance(cell, str)  # stored as JSON text
        matrix = tables.decode_cell("folds", "confusion_matrix", cell)
        assert matrix.dtype == np.int64
        np.testing.assert_array_equal(matrix, HAND[f])
        reference = skm.confusion_matrix(Y_TRUE[f], Y_PRED[f], labels=[0, 1, 2])
        np.testing.assert_array_equal(matrix, reference)
        # an already-decoded cell gives the same
        np.testing.assert_array_equal(tables.confusion_matrix_of(json.loads(cell)), matrix)
        np.testing.assert_array_equal(tables.confusion_matrix_of(np.asarray(HAND[f])), matrix)


def test_well_level_confusion_matrix_reads_back_as_the_wells_majority(tmp_path):
    folds = _recorded_folds(tmp_path)
    y_true, proba, wells = Y_TRUE[0], _proba(Y_PRED[0]), WELLS[0]
    names = np.unique(wells)
    true_w = [y_true[wells == w][0] for w in names]  # wells are class-pure
    pred_w = [proba[wells == w].mean(0).argmax() for w in names]
    reference = skm.confusion_matrix(true_w, pred_w, labels=[0, 1, 2])
    matrix = tables.decode_cell(
        "folds", "well/confusion_matrix", folds.loc[0, "well/confusion_matrix"]
    )
    np.testing.assert_array_equal(matrix, reference)
    assert matrix.sum() == 3


def test_roc_curves_read_back_as_sklearn_draws_them(tmp_path):
    folds = _recorded_folds(tmp_path)
    for f in range(2):
        curves = tables.decode_cell("folds", "roc", folds.loc[f, "roc"])
        assert list(curves) == CLASSES  # in class order
        proba = _proba(Y_PRED[f])
        for c, name in enumerate(CLASSES):
            fpr, tpr, _ = skm.roc_curve(Y_TRUE[f] == c, proba[:, c])
            assert curves[name]["fpr"] == pytest.approx(fpr.tolist())
            assert curves[name]["tpr"] == pytest.approx(tpr.tolist())
            assert curves[name]["auc"] == pytest.approx(
                skm.roc_auc_score(Y_TRUE[f] == c, proba[:, c])
            )
        assert tables.roc_of(json.loads(folds.loc[f, "roc"])) == curves
    assert list(tables.decode_cell("folds", "well/roc", folds.loc[0, "well/roc"])) == CLASSES


def test_missing_cells_decode_to_none():
    assert tables.decode_cell("folds", "roc", None) is None
    assert tables.decode_cell("folds", "confusion_matrix", float("nan")) is None
    assert tables.decode_cell("folds", "well/roc", pd.NA) is None
    curves = tables.roc_of({"x": {"fpr": [0, 1], "tpr": [0, 1]}})
    assert np.isnan(curves["x"]["auc"])  # a curve without its AUC


@pytest.mark.parametrize(
    ("column", "value", "says"),
    [
        ("confusion_matrix", "[[1, 2], [3", "K x K matrix"),  # not JSON
        ("confusion_matrix", "[[1, 2], [3]]", "K x K matrix"),  # ragged
        ("confusion_matrix", "[[1, 2, 3], [4, 5, 6]]", "K x K matrix"),  # not square
        ("confusion_matrix", "[[1, -2], [3, 4]]", "non-negative"),
        ("confusion_matrix", "[[1, 2.5], [3, 4]]", "whole counts"),
        ("well/confusion_matrix", '{"a": 1}', "K x K matrix"),
        ("roc", "[1, 2]", "class name ->"),
        ("roc", '{"a": {"fpr": [0, 1], "tpr": [0]}}', "equally long"),
        ("roc", '{"a": {"fpr": [0, 1]}}', "class name ->"),
        ("well/roc", '{"a": {"fpr": ["x"], "tpr": [0]}}', "class name ->"),
    ],
)
def test_a_malformed_cell_names_its_column_and_the_fix(column, value, says):
    with pytest.raises(ValueError, match=says) as raised:
        tables.decode_cell("folds", column, value)
    message = str(raised.value)
    assert f"folds column {column!r}" in message
    assert "re-record the trial" in message


def test_only_json_columns_of_known_tables_are_decoded():
    with pytest.raises(ValueError, match="'accuracy' holds no JSON.*'confusion_matrix', 'roc'"):
        tables.decode_cell("folds", "accuracy", 0.5)
    with pytest.raises(ValueError, match="not one of"):
        tables.decode_cell("fold", "roc", "{}")


def test_the_trial_page_draws_the_decoded_cells(tmp_path):
    from cytotune.dashboard.pages import trial

    folds = _recorded_folds(tmp_path)
    assert trial._classes(type("S", (), {"manifest": lambda self: {}})(), folds) == CLASSES
    heatmap = trial.confusion_figure(folds, CLASSES)["data"][0]
    np.testing.assert_array_equal(heatmap["customdata"], np.add(*HAND))
    drawn = trial.roc_figure(folds, CLASSES)["data"][1:]  # after the diagonal
    assert len(drawn) == 2 * len(CLASSES)
    assert drawn[0]["name"].startswith("fold 0 · a (AUC ")
    # a malformed fold is left out, as before
    folds.loc[1, ["roc", "confusion_matrix"]] = ["[1, 2]", "[[1, 2], [3]]"]
    heatmap = trial.confusion_figure(folds, CLASSES)["data"][0]
    np.testing.assert_array_equal(heatmap["customdata"], HAND[0])
    assert len(trial.roc_figure(folds, CLASSES)["data"]) == 1 + len(CLASSES)
