"""Worker pools start from a clean process, never a fork of the caller (which may hold Ray's
threads: forked ingest workers crashed with SIGSEGV after an earlier ``ray.init``)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from cytotune.engine.data import ingest as ingest_module
from cytotune.engine.data.ingest import IngestOptions, ingest
from cytotune.engine.pools import clean_context, worker_pool


def test_workers_are_not_forked_from_the_caller():
    assert clean_context().get_start_method() in ("forkserver", "spawn")
    with worker_pool(2) as pool:
        parents = set(pool.map(_parent_pid, range(4)))
    # A forked worker's parent is this process; a forkserver's or spawned one's is not.
    assert os.getpid() not in parents


def _parent_pid(_: int) -> int:
    return os.getppid()


def test_ingest_uses_the_clean_pool_and_keeps_every_crop(tmp_path, monkeypatch):
    made = []

    def recording_pool(workers, **kwargs):
        made.append(workers)
        return worker_pool(workers, **kwargs)

    monkeypatch.setattr(ingest_module, "worker_pool", recording_pool)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(80):  # over the 64 crops below which ingest stays in this process
        np.save(tmp_path / f"c{i}.npy", rng.integers(0, 256, size=(1, 8, 8), dtype=np.uint8))
        rows.append({"path": f"c{i}.npy", "label": "ab"[i % 2]})
    index = tmp_path / "index.csv"
    pd.DataFrame(rows).to_csv(index, index=False)
    report = ingest(index, tmp_path / "ds", IngestOptions(workers=2), progress=False)
    assert made == [2]
    assert (report.manifest.num_rows, report.manifest.num_quarantined) == (80, 0)
