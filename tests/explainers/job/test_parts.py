"""Map part files: a batch written twice is stored once (explainers/job/parts.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from cytotune.explainers.job.layout import read_maps
from cytotune.explainers.job.parts import finish_parts, write_part


def _batch(cells: list[str], fold: int = 0, targets=(0,)) -> pa.Table:
    rows = [(c, t) for t in targets for c in cells]
    return pa.table(
        {
            "cell_id": [c for c, _ in rows],
            "fold": pa.array([fold] * len(rows), pa.int32()),
            "target_index": pa.array([t for _, t in rows], pa.int32()),
            # a value that depends only on the cell and output, as a map does
            "confidence": pa.array([float(int(c[1:]) * 10 + t) for c, t in rows], pa.float32()),
        }
    )


def _cells(n0: int, n1: int) -> list[str]:
    return [f"c{i}" for i in range(n0, n1)]


def test_a_batch_written_again_replaces_its_part(tmp_path):
    first = write_part(_batch(_cells(0, 4)), tmp_path)
    again = write_part(_batch(_cells(0, 4)), tmp_path)
    other = write_part(_batch(_cells(4, 8)), tmp_path)
    assert first == again != other
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])
    # the same cells in another fold or for another output are another part
    assert write_part(_batch(_cells(0, 4), fold=1), tmp_path) != first
    assert write_part(_batch(_cells(0, 4), targets=(1,)), tmp_path) != first


def test_finish_parts_keeps_each_cell_and_output_once(tmp_path):
    write_part(_batch(_cells(0, 4), targets=(0, 1)), tmp_path)
    write_part(_batch(_cells(4, 8), targets=(0, 1)), tmp_path)
    write_part(_batch(_cells(2, 6), targets=(0, 1)), tmp_path)  # cut differently on a rerun
    write_part(_batch(_cells(6, 8), targets=(0, 1)), tmp_path)  # wholly repeated
    (tmp_path / ".part-x.parquet.dead.tmp").write_bytes(b"half a file")  # a writer that died
    before = read_maps(tmp_path).to_pandas()
    assert before.duplicated(["cell_id", "target_index"]).sum() == 12
    rows = finish_parts(tmp_path)
    after = read_maps(tmp_path).to_pandas()
    assert rows == len(after) == 16
    assert not after.duplicated(["cell_id", "target_index"]).any()
    expected = before.drop_duplicates(["cell_id", "target_index"])
    key = ["cell_id", "target_index"]
    pd.testing.assert_frame_equal(
        after.sort_values(key).reset_index(drop=True),
        expected.sort_values(key).reset_index(drop=True),
    )
    assert not list(tmp_path.glob(".*"))
    assert finish_parts(tmp_path) == 16  # nothing left to do


def test_finish_parts_leaves_sound_parts_untouched(tmp_path):
    paths = [write_part(_batch(_cells(i, i + 4)), tmp_path) for i in (0, 4, 8)]
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert finish_parts(tmp_path) == 12
    assert [p.stat().st_mtime_ns for p in paths] == stamps
    table = read_maps(tmp_path).to_pandas()
    np.testing.assert_array_equal(np.sort(table["confidence"]), np.arange(12) * 10.0)
