"""The results store's tables: one typed definition, a version checked on read, one writer."""

from __future__ import annotations

import io
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cytotune.engine.cli import main
from cytotune.engine.search import tables
from cytotune.engine.search.recorder import StudyRecorder
from cytotune.engine.search.store import StudyStore
from cytotune.engine.search.tables import FormatError

SAMPLE = {"family": "backbone", "backbone": {"backbone": "resnet18", "dropout": 0.25,
          "mlp": [64, 32]}, "train": {"lr": 0.003}}  # fmt: skip


def _recorded(tmp_path) -> StudyStore:
    store = StudyStore(str(tmp_path / "study"))
    recorder = StudyRecorder(store, k=2, max_epochs=2, flush_every_s=float("inf"))
    recorder.started("t1", SAMPLE)
    for epoch in (1, 2):
        recorder.reported(
            "t1",
            {"epoch": epoch, "val/acc": 0.5 + epoch / 10, "val/acc_std": 0.01, "fold0/acc": 0.6,
             "fold1/acc": 0.7, "train_loss": 1.0 / epoch, "node_id": "n1"},
        )  # fmt: skip
    details = [{"fold": f, "epoch": 2, "n_val": 10, "acc": 0.6, "confusion_matrix": [[1, 2], [3, 4]]}
               for f in range(2)]  # fmt: skip
    recorder.completed("t1", checkpoint=str(tmp_path / "ckpt"), fold_details=details)
    return store


def test_recorded_tables_round_trip_with_their_types_and_version(tmp_path):
    store = _recorded(tmp_path)
    trials = StudyStore(store.uri).table("trials")
    assert set(tables.TRIALS.fields) <= set(trials.columns)  # every fixed column, typed
    row = trials.iloc[0]
    assert (row["status"], row["epochs_done"], row["folds_done"]) == ("completed", 2, 2)
    assert row["param.backbone.mlp"] == "[64, 32]"
    assert row["nodes"] == "n1"
    assert row["val/acc"] == pytest.approx(0.7)
    folds = store.table("folds")
    assert json.loads(folds["confusion_matrix"].iloc[1]) == [[1, 2], [3, 4]]
    epochs = store.table("epochs")
    assert sorted(zip(epochs["epoch"], epochs["fold"])) == [(1, -1), (1, 0), (1, 1), (2, -1),
                                                           (2, 0), (2, 1)]  # fmt: skip
    meta = pq.read_schema(f"{store.path}/trials.parquet").metadata
    assert meta[b"cytotune.table"] == b"trials"
    assert meta[b"cytotune.version"] == b"1"
    typed = StudyStore(store.uri).trial("t1")
    assert typed.sample == SAMPLE
    assert typed.metric("acc") == pytest.approx(0.7)
    assert typed.retries is None
    assert typed.metric("nope") is None


def test_the_writer_refuses_a_column_the_format_does_not_define(tmp_path):
    store = StudyStore(str(tmp_path))
    with pytest.raises(FormatError, match="'score'.*Add it to TrialRow"):
        store.upsert("trials", ("t1",), {"trial_id": "t1", "score": 0.3})
    with pytest.raises(FormatError, match="status"):
        tables.write_table("trials", [{"trial_id": "t1", "status": "done"}])
    with pytest.raises(FormatError, match="epochs_done"):
        tables.write_table("trials", [{"trial_id": "t1", "epochs_done": 1.5}])
    with pytest.raises(FormatError, match="key"):
        tables.write_table("folds", [{"trial_id": "t1"}])


def _parquet(table: pa.Table, path) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    path.write_bytes(buffer.getvalue())


def test_old_and_unknown_versions_say_how_to_fix_them(tmp_path):
    store = _recorded(tmp_path)
    target = tmp_path / "study" / "trials.parquet"
    current = pq.read_table(target)
    # a table from before format versions (plain pandas, no metadata): upgrade it
    current.replace_schema_metadata(None).to_pandas().to_parquet(target, index=False)
    with pytest.raises(FormatError, match="before cytotune.s table format versions.*upgrade"):
        StudyStore(store.uri).table("trials")
    assert main(["upgrade", store.uri]) == 0
    assert StudyStore(store.uri).table("trials")["status"].tolist() == ["completed"]
    assert StudyStore(store.uri).upgrade() == []  # already current: nothing rewritten
    # a newer cytotune's table: install that one
    newer = {b"cytotune.table": b"trials", b"cytotune.version": b"99"}
    _parquet(current.replace_schema_metadata(newer), target)
    with pytest.raises(FormatError, match="newer than this cytotune.*pip install"):
        StudyStore(store.uri).table("trials")
    # another table under this name
    _parquet(pq.read_table(tmp_path / "study" / "folds.parquet"), target)
    with pytest.raises(FormatError, match="holds the 'folds' table"):
        StudyStore(store.uri).table("trials")


def test_an_empty_store_reads_as_typed_empty_tables(tmp_path):
    trials = StudyStore(str(tmp_path)).table("trials")
    assert trials.empty
    assert "status" in trials
    assert "checkpoint" in trials
    with pytest.raises(ValueError, match="not one of"):
        StudyStore(str(tmp_path)).table("trails")


def test_key_params_has_one_definition():
    from cytotune.dashboard import data

    assert data.key_params is tables.key_params
    assert tables.key_params(SAMPLE) == "resnet18 dropout=0.25 mlp=64x32 lr=3.0e-03"
    assert tables.key_params(json.dumps(SAMPLE)) == tables.key_params(SAMPLE)
    assert tables.key_params("not json") == ""
    assert tables.key_params(None) == ""
    assert tables.key_params(pd.NA) == ""


def test_the_dashboard_says_how_to_upgrade_an_old_study(tmp_path):
    from cytotune.dashboard.data import Study, StudyUnreadable

    store = _recorded(tmp_path)
    target = tmp_path / "study" / "trials.parquet"
    pq.read_table(target).replace_schema_metadata(None).to_pandas().to_parquet(target)
    with pytest.raises(StudyUnreadable, match=r"upgrade.*`cytotune upgrade STUDY_DIR`"):
        Study("old", store.path).trials()
    assert Study("old", store.path).summary()["status"] == "unreadable"


def test_epoch_rows_lost_with_a_killed_driver_are_backfilled_from_tunes_log(tmp_path):
    """A driver killed before the store's flush loses its last reports' epoch rows; the
    resumed trial goes on after its checkpoint. At the trial's end the rows come back from the
    reports Tune's JSON logger kept, and rows the store has are left as they are."""
    store = StudyStore(str(tmp_path / "study"))
    recorder = StudyRecorder(store, k=2, max_epochs=2, flush_every_s=float("inf"))
    recorder.started("t1", SAMPLE)
    reports = [
        {"epoch": epoch, "val/acc": 0.5 + epoch / 10, "fold0/acc": 0.6, "fold1/acc": 0.7,
         "train_loss": 1.0 / epoch}
        for epoch in (1, 2)
    ]  # fmt: skip
    recorder.reported("t1", reports[1])  # epoch 1 was lost with the driver
    kept = {(r["epoch"], r["fold"]): dict(r) for r in store.rows("epochs")}
    assert recorder.backfill("t1", [{"trial_id": "t1"}, *reports]) == 3  # epoch 1: 2 folds, mean
    rows = {(r["epoch"], r["fold"]): r for r in store.rows("epochs")}
    assert sorted(rows) == [(1, -1), (1, 0), (1, 1), (2, -1), (2, 0), (2, 1)]
    assert rows[(1, -1)]["acc"] == pytest.approx(0.6)
    assert rows[(1, 0)]["acc"] == 0.6
    assert all(rows[key] == row for key, row in kept.items())
    assert recorder.backfill("t1", reports + reports) == 0  # nothing twice


def test_a_lost_fold_curve_is_backfilled_with_the_fold_means(tmp_path):
    """race: folds reports a finished fold's curve; one lost with the driver comes back, and the
    fold-mean rows (fold -1) then average both folds."""
    store = StudyStore(str(tmp_path / "study"))
    recorder = StudyRecorder(store, k=2, max_epochs=2, race="folds", flush_every_s=float("inf"))
    recorder.started("t1", SAMPLE)
    reports = [
        {"epoch": 2, "fold": fold, "folds_done": fold + 1,
         "fold_curve": [{"epoch": e, "acc": 0.5 + fold / 10 + e / 100} for e in (1, 2)]}
        for fold in (0, 1)
    ]  # fmt: skip
    recorder.reported("t1", reports[0])  # fold 1's curve was lost with the driver
    assert recorder.backfill("t1", reports) == 2
    rows = {(r["epoch"], r["fold"]): r for r in store.rows("epochs")}
    assert sorted(rows) == [(1, -1), (1, 0), (1, 1), (2, -1), (2, 0), (2, 1)]
    assert rows[(2, -1)]["acc"] == pytest.approx((0.52 + 0.62) / 2)
    assert rows[(2, -1)]["n_folds"] == 2
