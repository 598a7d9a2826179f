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
    with pytest.raises(ValueError, match="CYTOTUNE_FOLD_BATCHES='on': give 1"):
        batch_by_fold()


def test_ray_read_tasks_sort_the_cells_by_fold_over_windows_of_batches(tmp_path):
    """The Ray path: a read task sorts each window of rows by fold (``AttachFold``) before
    cutting it into chunks, so the batches Ray Data cuts from the stream hold fewer folds; every
    planned cell comes once, in chunks of at most the batch size."""
    import pyarrow.parquet as pq
    from cytotune.engine.data.row_groups import RowGroupReader
    from cytotune.explainers.job.maps import AttachFold

    rng = np.random.default_rng(2)
    n = 1000
    cells = np.array([f"c{i}" for i in range(n)])
    folds = rng.integers(0, 5, n)
    path = tmp_path / "shard.parquet"
    pq.write_table(pa.table({"cell_id": cells}), path, row_group_size=1000)
    planned = rng.permutation(n)[:900]  # 100 cells not planned are dropped
    attach = AttachFold(cells[planned], folds[planned])
    items = {"path": [str(path)], "row_group": [0]}
    out = {}
    for window in (None, 512):
        chunks = list(
            RowGroupReader(["cell_id"], attach, chunk_rows=128, window_rows=window)(items)
        )
        assert all(0 < c.num_rows <= 128 for c in chunks)
        stream = pa.concat_tables(chunks)
        assert sorted(stream.column("cell_id").to_pylist()) == sorted(cells[planned].tolist())
        fold_of = dict(zip(cells[planned].tolist(), folds[planned].tolist()))
        assert stream.column("fold").to_pylist() == [
            fold_of[c] for c in stream.column("cell_id").to_pylist()
        ]
        got = stream.column("fold").to_numpy()
        out[window] = np.mean([len(set(got[s : s + 128])) for s in range(0, len(got), 128)])
    assert out[512] < out[None] / 2  # 5 folds in nearly every batch before, about 2 after


def test_even_batch_size_cuts_each_fold_into_as_few_batches_of_near_equal_size():
    """Hand-computed: MitoCheck-like folds of 654-657 cells at 256 need 3 batches each, of at
    most 219 cells (657 / 3); a fold under the batch size is one batch; no fold: the size."""
    from cytotune.explainers.job.maps import even_batch_size

    assert even_batch_size([655, 656, 654, 657, 655], 256) == 219
    assert even_batch_size([100, 90], 256) == 100
    assert even_batch_size([512], 256) == 256
    assert even_batch_size([513], 256) == 171
    assert even_batch_size([513, 0], 256) == 171
    assert even_batch_size([], 256) == 256
    rng = np.random.default_rng(1)
    for _ in range(200):  # never more batches than the batch size gives, never a bigger one
        counts = rng.integers(1, 3000, 5).tolist()
        batch = int(rng.integers(1, 600))
        size = even_batch_size(counts, batch)
        assert size <= batch
        assert all(-(-n // size) == -(-n // batch) for n in counts)


def test_even_batches_are_on_by_default_only_on_a_gpu_and_only_by_fold(monkeypatch):
    from cytotune.explainers.job import maps

    for name in (maps.EVEN_BATCHES_ENV, maps.FOLD_BATCHES_ENV):
        monkeypatch.delenv(name, raising=False)
    assert maps.even_batches(["cuda:0"])
    assert not maps.even_batches(["cpu"])
    monkeypatch.setenv(maps.EVEN_BATCHES_ENV, "1")
    assert maps.even_batches(["cpu"])
    monkeypatch.setenv(maps.EVEN_BATCHES_ENV, "0")
    assert not maps.even_batches(["cuda:0"])
    monkeypatch.delenv(maps.EVEN_BATCHES_ENV)
    monkeypatch.setenv(maps.FOLD_BATCHES_ENV, "0")  # batches of several folds: never padded
    assert not maps.even_batches(["cuda:0"])
