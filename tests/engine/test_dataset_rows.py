"""``CellDataset.images(rows)`` reads only the row groups that hold the rows, and gives what
taking the rows from the whole image column gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from cytotune.engine.data import CellDataset
from cytotune.engine.data.ingest import IngestOptions, ingest
from cytotune.engine.data.schema import decode_images


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rows")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(50):
        np.save(folder / f"c{i}.npy", rng.integers(0, 60000, size=(2, 6, 6), dtype=np.uint16))
        rows.append({"path": f"c{i}.npy", "label": "ab"[i % 2]})
    pd.DataFrame(rows).to_csv(folder / "index.csv", index=False)
    options = IngestOptions(workers=1, rows_per_shard=7)
    ingest(folder / "index.csv", folder / "ds", options, progress=False)
    return CellDataset(folder / "ds")


def test_given_rows_equal_the_whole_column_taken(dataset):
    assert len(dataset.shard_paths) > 3  # rows spread over several shards
    m = dataset.manifest
    whole = decode_images(dataset.table(["image"]).column("image"), m.dtype, m.shape)
    assert np.array_equal(dataset.images(), whole)
    for rows in ([49, 0, 13, 13, 7, 48], [8], list(range(50))[::-3], []):
        got = dataset.images(np.array(rows, np.int64))
        assert got.shape == (len(rows), *m.shape)
        assert np.array_equal(got, whole[rows])


def test_given_rows_read_only_their_row_groups(dataset, monkeypatch):
    read = []
    original = pq.ParquetFile.read_row_group

    def counted(self, index, *args, **kwargs):
        read.append(index)
        return original(self, index, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counted)
    dataset.images(np.array([3, 1]))  # both in the first shard's one row group
    assert len(read) == 1


def test_rows_outside_the_dataset_say_which(dataset):
    with pytest.raises(IndexError, match=r"rows \[50\] are outside dataset"):
        dataset.images(np.array([2, 50]))
    with pytest.raises(IndexError, match=r"rows \[-1\]"):
        dataset.images(np.array([-1]))
