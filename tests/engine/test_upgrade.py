"""``cytotune upgrade DIR``: tables from before format versions rewritten with the same values."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest
from cytotune.engine.cli import main
from cytotune.engine.search.recorder import StudyRecorder
from cytotune.engine.search.store import StudyStore
from cytotune.engine.search.tables import FormatError
from cytotune.explainers.job import layout

SAMPLE = {"family": "small_cnn", "small_cnn": {"width": 8}, "train": {"lr": 0.002}}


def _study(tmp_path) -> StudyStore:
    store = StudyStore(str(tmp_path / "study"))
    recorder = StudyRecorder(store, k=2, max_epochs=1, flush_every_s=float("inf"))
    recorder.started("t1", SAMPLE)
    recorder.reported("t1", {"epoch": 1, "val/acc": 0.625, "val/acc_std": 0.125,
                             "train_loss": 0.75, "node_id": "n1"})  # fmt: skip
    details = [{"fold": f, "epoch": 1, "n_val": 8, "acc": 0.5 + f / 4} for f in range(2)]
    recorder.completed("t1", checkpoint=str(tmp_path / "ckpt"), fold_details=details)
    return store


def _unversioned(path) -> None:
    """Rewrite a table the way cytotune wrote it before format versions (plain pandas)."""
    pq.read_table(path).replace_schema_metadata(None).to_pandas().to_parquet(path, index=False)


def test_upgrade_rewrites_an_old_study_with_the_same_values(tmp_path, capsys):
    store = _study(tmp_path)
    for name in ("trials", "folds"):
        _unversioned(tmp_path / "study" / f"{name}.parquet")
    with pytest.raises(FormatError, match="`cytotune upgrade STUDY_DIR`"):
        StudyStore(store.uri).table("trials")

    assert main(["upgrade", store.uri]) == 0
    out = capsys.readouterr().out
    assert "trials.parquet to format version 1" in out
    assert "folds.parquet to format version 1" in out
    assert "epochs.parquet" not in out  # current already: left alone

    trials = StudyStore(store.uri).table("trials")  # the typed reader takes it now
    row = trials.iloc[0]
    assert (row["trial_id"], row["status"], row["family"]) == ("t1", "completed", "small_cnn")
    assert row["val/acc"] == 0.625
    assert row["val/acc_std"] == 0.125
    assert row["train_loss"] == 0.75
    assert row["epochs_done"] == 1
    assert row["param.small_cnn.width"] == 8
    assert (
        pq.read_schema(tmp_path / "study" / "trials.parquet").metadata[b"cytotune.version"] == b"1"
    )
    folds = StudyStore(store.uri).table("folds").sort_values("fold")
    assert folds["acc"].tolist() == [0.5, 0.75]
    assert folds["n_val"].tolist() == [8, 8]

    assert main(["upgrade", store.uri]) == 0
    assert "nothing to upgrade" in capsys.readouterr().out


def test_upgrade_rewrites_an_old_explain_runs_index_tables(tmp_path, capsys):
    target = layout.explain_dir(tmp_path) / "quality.parquet"
    target.parent.mkdir(parents=True)
    (target.parent / layout.STATE_FILE).write_text("{}")
    rows = [{"trial_id": "t1", "method": "gradcam", "metric": "deletion_auc", "mean": 0.375,
             "std": 0.125, "n": 16}]  # fmt: skip
    pd.DataFrame(rows).to_parquet(target)  # plain pandas: no format version
    with pytest.raises(FormatError, match="cytotune upgrade"):
        layout.read_index(tmp_path, "quality")

    assert main(["upgrade", str(target.parent)]) == 0
    assert "quality.parquet to format version 1" in capsys.readouterr().out
    table = layout.read_index(tmp_path, "quality")
    assert table[["metric", "mean", "std", "n"]].values.tolist() == [
        ["deletion_auc", 0.375, 0.125, 16]
    ]


def test_a_directory_that_is_no_study_is_a_clear_error(tmp_path, capsys):
    assert main(["upgrade", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["upgrade", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "is not a cytotune study" in err
    assert "runs/studies/NAME" in err
