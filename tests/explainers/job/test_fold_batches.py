"""The local maps stage regroups the cells into batches of one fold: one pass per (trial,
method) and batch instead of one per fold in it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from cytotune.explainers.job.maps import fold_batches


def _tables(folds: np.ndarray, size: int) -> list[pa.Table]:
    cells = [f"c{i}" for i in range(len(folds))]
    table = pa.table({"cell_id": cells, "fold": pa.array(folds, pa.int32()),
                      "image": [bytes([i % 256]) * 4 for i in range(len(folds))]})  # fmt: skip
    return [table.slice(i, size) for i in range(0, len(folds), size)]


def test_every_cell_once_in_batches_of_one_fold_of_the_batch_size():
    rng = np.random.default_rng(0)
    folds = rng.integers(0, 5, 1000)
    batches = list(fold_batches(_tables(folds, 128), 128))
    for batch in batches:
        assert len(set(batch.column("fold").to_pylist())) == 1
        assert batch.column("cell_id").num_chunks == 1  # one piece of memory per column
    sizes: dict[int, list[int]] = {}
    for batch in batches:
        sizes.setdefault(batch.column("fold")[0].as_py(), []).append(batch.num_rows)
    for fold, counts in sizes.items():
        n = int((folds == fold).sum())
        assert counts == [128] * (n // 128) + ([n % 128] if n % 128 else []), fold
    cells = [c for b in batches for c in b.column("cell_id").to_pylist()]
    assert sorted(cells) == sorted(f"c{i}" for i in range(1000))
    # within a fold, the cells keep their order, and each row keeps its columns
    for fold in range(5):
        got = [c for b in batches if b.column("fold")[0].as_py() == fold
               for c in b.column("cell_id").to_pylist()]  # fmt: skip
        assert got == [f"c{i}" for i in np.flatnonzero(folds == fold)]
    image = {c: v for b in batches for c, v in zip(b.column("cell_id").to_pylist(),
             b.column("image").to_pylist())}  # fmt: skip
    assert image["c300"] == bytes([300 % 256]) * 4


def test_tables_of_one_fold_pass_through_and_an_empty_stream_gives_nothing():
    folds = np.zeros(100, np.int64)
    batches = list(fold_batches(_tables(folds, 30), 64))
    assert [b.num_rows for b in batches] == [64, 36]
    assert list(fold_batches([], 64)) == []


def test_the_regrouping_can_be_switched_off_and_a_bad_value_says_what_to_give(monkeypatch):
    import pytest
    from cytotune.explainers.job.maps import FOLD_BATCHES_ENV, batch_by_fold

    monkeypatch.delenv(FOLD_BATCHES_ENV, raising=False)
    assert batch_by_fold() is True
    monkeypatch.setenv(FOLD_BATCHES_ENV, "0")
    assert batch_by_fold() is False
    monkeypatch.setenv(FOLD_BATCHES_ENV, "on")
    with pytest.raises(ValueError, match="give 1"):
        batch_by_fold()
