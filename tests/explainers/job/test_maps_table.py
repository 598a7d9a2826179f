"""The explain job's map tables (explain/maps/<trial>/<method>.parquet): typed rows and a format
version in every file, written by ``layout.write_maps``, read back by ``read_maps`` /
``iter_maps`` / ``maps_schema``, which refuse an older run's with the fix (issue 17)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cytotune.engine.cli import main
from cytotune.engine.formats import FormatError
from cytotune.explainers.job import layout


def _rows(n: int = 3) -> tuple[list[dict], list[np.ndarray]]:
    arrays = [np.arange(8, dtype=np.float16).reshape(2, 2, 2) * (i + 1) / 4 for i in range(n)]
    rows = [
        {"cell_id": f"c{i}", "trial_id": "t1", "method": "saliency", "fold": i % 2,
         "label": "a", "label_index": 0, "prediction": "b", "prediction_index": 1,
         "confidence": 0.75, "correct": False, "target_index": 1, "map": a.tobytes(),
         "map_shape": [2, 2, 2], "mass_cell": 0.5 + i / 8}
        for i, a in enumerate(arrays)
    ]  # fmt: skip
    return rows, arrays


def _path(study, part: str = "part-a.parquet"):
    return layout.maps_path(study, "t1", "saliency") / part


def test_map_tables_round_trip_typed_and_versioned(tmp_path):
    rows, arrays = _rows()
    path = layout.write_maps(pd.DataFrame(rows), _path(tmp_path))
    meta = pq.read_schema(path).metadata
    assert meta[b"cytotune.table"] == b"maps"
    assert meta[b"cytotune.version"] == b"1"
    table = layout.read_maps(layout.maps_path(tmp_path, "t1", "saliency"))
    assert table.column_names == list(layout.MAP_COLUMNS)
    assert table.schema.field("fold").type == pa.int32()
    assert table.schema.field("confidence").type == pa.float32()
    assert table.schema.field("map_shape").type == pa.list_(pa.int32())
    frame = table.to_pandas()
    assert frame["cell_id"].tolist() == ["c0", "c1", "c2"]
    assert frame["fold"].tolist() == [0, 1, 0]
    assert frame["mass_cell"].tolist() == [0.5, 0.625, 0.75]
    assert frame["true_value"].isna().all()  # not written: null, still a column
    for i, expected in enumerate(arrays):
        row = frame.iloc[i]
        np.testing.assert_array_equal(layout.decode_map(row["map"], row["map_shape"]), expected)
    assert layout.maps_schema(path.parent).names == list(layout.MAP_COLUMNS)
    batches = list(layout.iter_maps(path.parent, ["cell_id"], batch_size=2))
    assert sum(b.num_rows for b in batches) == 3


def test_the_map_writer_refuses_a_column_the_row_type_lacks(tmp_path):
    rows, _ = _rows(1)
    with pytest.raises(FormatError, match="'score'.*MapRow"):
        layout.write_maps(pd.DataFrame([{**rows[0], "score": 1.0}]), _path(tmp_path))
    with pytest.raises(FormatError, match="key"):
        layout.write_maps(pd.DataFrame([{"cell_id": "c0"}]), _path(tmp_path))
    assert not _path(tmp_path).exists()


def test_a_map_table_from_an_older_explain_run_is_refused_then_upgraded(tmp_path, capsys):
    rows, arrays = _rows()
    current = layout.write_maps(pd.DataFrame(rows[:1]), _path(tmp_path, "part-a.parquet"))
    old = _path(tmp_path, "part-b.parquet")
    pd.DataFrame(rows[1:]).to_parquet(old, index=False)  # plain pandas: no format version
    table = layout.maps_path(tmp_path, "t1", "saliency")
    for read in (layout.read_maps, layout.maps_schema, layout.iter_maps):
        with pytest.raises(FormatError, match="part-b.parquet was written before"):
            read(table)
    with pytest.raises(FormatError, match="cytotune upgrade STUDY_DIR.*--overwrite"):
        layout.read_maps(table)

    (tmp_path / "study.json").write_text("{}")
    assert main(["upgrade", str(tmp_path)]) == 0
    assert f"{table} to format version 1" in capsys.readouterr().out
    frame = layout.read_maps(table).to_pandas().sort_values("cell_id")
    assert frame["cell_id"].tolist() == ["c0", "c1", "c2"]
    assert frame["mass_cell"].tolist() == [0.5, 0.625, 0.75]
    for i, expected in enumerate(arrays):
        row = frame.iloc[i]
        np.testing.assert_array_equal(layout.decode_map(row["map"], row["map_shape"]), expected)
    stamp = current.stat().st_mtime_ns
    assert main(["upgrade", str(tmp_path)]) == 0
    assert "nothing to upgrade" in capsys.readouterr().out
    assert current.stat().st_mtime_ns == stamp


def test_a_map_table_of_a_newer_cytotune_names_the_fix(tmp_path, capsys):
    rows, _ = _rows(1)
    path = layout.write_maps(pd.DataFrame(rows), _path(tmp_path))
    newer = {b"cytotune.table": b"maps", b"cytotune.version": b"99"}
    pq.write_table(pq.read_table(path).replace_schema_metadata(newer), path)
    with pytest.raises(FormatError, match="newer than this cytotune.*pip install"):
        layout.read_maps(path.parent)
    (tmp_path / "study.json").write_text("{}")
    assert main(["upgrade", str(tmp_path)]) == 2
    assert "newer than this cytotune" in capsys.readouterr().err
