"""The metrics a bundle carries (``cv_metrics``, metrics.json of a bundle) read the folds table's
JSON-valued cells through the results tables' one decoder (tables.decode_cell): counted
confusion matrices come back as scikit-learn counts them, and a malformed cell stops the pull
with the decoder's message instead of landing in the bundle as text."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cytotune.engine.export.source import TrialSource, cv_metrics, fold_metrics
from cytotune.engine.metrics import classification_metrics, group_metrics
from cytotune.engine.search.recorder import StudyRecorder
from cytotune.engine.search.store import StudyStore
from sklearn import metrics as skm

# two folds of three classes, the labels and the well-level counts written out by hand there
from tests.engine.test_table_cells import CLASSES, HAND, WELLS, Y_PRED, Y_TRUE, _proba


def _details() -> list[dict]:
    return [
        {
            "fold": f,
            "epoch": 1,
            "n_val": len(Y_TRUE[f]),
            **classification_metrics(Y_TRUE[f], _proba(Y_PRED[f]), CLASSES),
            **group_metrics(WELLS[f], Y_TRUE[f], _proba(Y_PRED[f]), CLASSES, "classification"),
        }
        for f in range(2)
    ]


def _source(tmp_path, details: list[dict] | None, on_disk: list[dict] | None = None):
    """A trial recorded by the study recorder (folds.parquet from ``details``) and its
    checkpoint directory (metrics.json from ``on_disk``)."""
    store = StudyStore(str(tmp_path / "study"))
    recorder = StudyRecorder(store, k=2, max_epochs=1, flush_every_s=float("inf"))
    recorder.started("t1", {"family": "backbone", "backbone": {}, "train": {"lr": 0.01}})
    recorder.reported(
        "t1", {"epoch": 1, "val/accuracy": 0.7, "val/accuracy_std": float("nan"), "train_loss": 1}
    )
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    if on_disk is not None:
        (checkpoint / "metrics.json").write_text(json.dumps(on_disk, default=float))
    recorder.completed("t1", checkpoint=str(checkpoint), fold_details=details)
    trial = StudyStore(store.uri).table("trials").iloc[0].to_dict()
    return TrialSource(tmp_path / "study", {}, trial, checkpoint, ("accuracy", "max"))


@pytest.mark.parametrize("where", ["folds.parquet", "metrics.json"])
def test_confusion_matrices_come_back_as_sklearn_counts_them(tmp_path, where):
    details = _details()
    source = _source(tmp_path, *((details, None) if where == "folds.parquet" else ([], details)))
    metrics = cv_metrics(source)
    assert [row["fold"] for row in metrics["folds"]] == [0, 1]
    for f, row in enumerate(metrics["folds"]):
        reference = skm.confusion_matrix(Y_TRUE[f], Y_PRED[f], labels=[0, 1, 2])
        assert row["confusion_matrix"] == reference.tolist() == HAND[f]
        assert all(type(n) is int for line in row["confusion_matrix"] for n in line)
        assert isinstance(row["well/confusion_matrix"], list)
        assert "roc" not in row
        assert "well/roc" not in row
        assert "trial_id" not in row
        assert row["n_val"] == len(Y_TRUE[f])
        assert row["accuracy"] == pytest.approx(skm.accuracy_score(Y_TRUE[f], Y_PRED[f]))
    assert metrics["mean"] == {"accuracy": 0.7}  # a NaN std is left out
    json.dumps(metrics, allow_nan=False)  # the bundle's metrics.json is plain JSON


# Each was passed through (as text or as a ragged list) by the hand decoder this replaced.
MALFORMED = [
    ("confusion_matrix", "[[1, 2], [3", "K x K matrix"),  # cut-off JSON
    ("confusion_matrix", [[1, 2], [3]], "K x K matrix"),  # ragged
    ("confusion_matrix", [[1, -2], [3, 4]], "non-negative"),
    ("well/confusion_matrix", [[1, 2.5], [3, 4]], "whole counts"),
    ("calibration", "[0.1, 0.2]", "holds no JSON to decode"),  # text in a metric column
]


@pytest.mark.parametrize(("column", "value", "says"), MALFORMED)
@pytest.mark.parametrize("where", ["folds.parquet", "metrics.json"])
def test_a_malformed_cell_stops_the_pull_naming_its_column(tmp_path, where, column, value, says):
    details = _details()
    details[1][column] = value
    source = _source(tmp_path, *((details, None) if where == "folds.parquet" else ([], details)))
    with pytest.raises(ValueError, match=says) as raised:
        cv_metrics(source)
    assert f"folds column {column!r}" in str(raised.value)


def test_fold_metrics_of_one_record():
    row = fold_metrics(
        "t", {"fold": 2.0, "n_val": np.int64(5), "f1": np.float32(0.5), "mse": float("nan")}
    )
    assert row == {"fold": 2, "n_val": 5, "f1": 0.5, "mse": None}
    assert type(row["fold"]) is int
    assert type(row["f1"]) is float
    assert fold_metrics("t", {"fold": 0, "confusion_matrix": np.eye(2)}) == {
        "fold": 0,
        "confusion_matrix": [[1, 0], [0, 1]],
    }
