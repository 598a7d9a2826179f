"""The explain job's index tables (explain/<name>.parquet): typed rows and a format version,
written by ``layout.write_frame`` and read back by ``layout.read_index`` (issue 17)."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest
from cytotune.engine.formats import FormatError
from cytotune.explainers.job import layout

QUALITY = [
    {"trial_id": "t1", "method": "gradcam", "metric": "deletion_auc", "mean": 0.4, "std": 0.1,
     "n": 16},
    {"trial_id": "t1", "method": "gradcam", "metric": "sanity_rho", "mean": 0.2, "std": 0.0,
     "n": 16},
]  # fmt: skip


def test_index_tables_round_trip_typed_and_versioned(tmp_path):
    path = layout.write_frame(
        pd.DataFrame(QUALITY), layout.explain_dir(tmp_path) / "quality.parquet"
    )
    meta = pq.read_schema(path).metadata
    assert meta[b"cytotune.table"] == b"quality"
    assert meta[b"cytotune.version"] == b"1"
    table = layout.read_index(tmp_path, "quality")
    assert table.columns.tolist() == list(layout.QUALITY_COLUMNS)
    assert table["n"].tolist() == [16, 16]
    assert table["mean"].tolist() == [0.4, 0.2]
    protos = [{"trial_id": "t1", "fold": 0, "prototype": 3, "class": 1, "path": "p.png"}]
    layout.write_frame(pd.DataFrame(protos), layout.explain_dir(tmp_path) / "prototypes.parquet")
    row = layout.read_index(tmp_path, "prototypes").iloc[0]
    assert row["class"] == 1
    assert pd.isna(row["top_distance"])  # absent: null, not dropped
    assert layout.read_index(tmp_path, "attention").empty  # not written: no rows, every column
    assert "pairs" in layout.read_index(tmp_path, "attention")


def test_a_column_the_row_type_lacks_or_a_wrong_type_is_refused(tmp_path):
    target = layout.explain_dir(tmp_path) / "quality.parquet"
    with pytest.raises(FormatError, match="'score'.*QualityRow"):
        layout.write_frame(pd.DataFrame([{**QUALITY[0], "score": 1.0}]), target)
    protos = [{"trial_id": "t1", "fold": 0, "prototype": 0, "class": "normal", "path": "p.png"}]
    with pytest.raises(FormatError, match="class"):
        layout.write_frame(
            pd.DataFrame(protos), layout.explain_dir(tmp_path) / "prototypes.parquet"
        )
    # other tables under explain/ are not index tables: written as they are
    other = layout.explain_dir(tmp_path) / "workers" / "summary.parquet"
    layout.write_frame(pd.DataFrame([{"anything": 1}]), other)
    assert pd.read_parquet(other)["anything"].tolist() == [1]


def test_an_index_table_from_an_older_explain_run_names_the_fix(tmp_path):
    from cytotune.dashboard.data import Study, StudyUnreadable
    from cytotune.dashboard.explain import Explanations

    target = layout.explain_dir(tmp_path) / "quality.parquet"
    target.parent.mkdir(parents=True)
    pd.DataFrame(QUALITY).to_parquet(target)  # plain pandas: no format version
    with pytest.raises(FormatError, match="--overwrite"):
        layout.read_index(tmp_path, "quality")
    with pytest.raises(StudyUnreadable, match="cytotune explain --study .* --overwrite"):
        Explanations(Study("old", tmp_path)).table("quality")


def test_the_quality_summary_reads_the_typed_table(tmp_path):
    from cytotune.explainers.job.summary import quality_table

    assert quality_table(tmp_path).empty  # no explain run yet
    layout.write_frame(pd.DataFrame(QUALITY), layout.explain_dir(tmp_path) / "quality.parquet")
    wide = quality_table(tmp_path)
    assert wide.loc[("t1", "gradcam"), "deletion"] == 0.4
    pd.DataFrame(QUALITY).to_parquet(layout.explain_dir(tmp_path) / "quality.parquet")
    with pytest.raises(FormatError, match="cytotune upgrade"):
        quality_table(tmp_path)
