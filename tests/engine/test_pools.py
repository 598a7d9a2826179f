"""Worker pools: forked as before in a process without Ray; started from a clean forkserver
process in one that has loaded Ray (forked ingest workers crashed with SIGSEGV in a Ray
client's destructor after an earlier ``ray.init``), with the readers registered at run time
passed on."""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pandas as pd
import pytest
from cytotune.engine.data import ingest as ingest_module
from cytotune.engine.data.ingest import IngestOptions, ingest
from cytotune.engine.data.readers import READERS, register_reader
from cytotune.engine.pools import pool_context, worker_pool


def _parent_pid(_: int) -> int:
    return os.getppid()


def _parents() -> set[int]:
    with worker_pool(2) as pool:
        return set(pool.map(_parent_pid, range(4)))


def test_workers_are_forked_without_ray_and_not_with_it(monkeypatch):
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert pool_context().get_start_method() == "fork"
    assert _parents() == {os.getpid()}  # a forked worker's parent is this process
    monkeypatch.setitem(sys.modules, "ray", sys.modules.get("ray") or types.ModuleType("ray"))
    assert pool_context().get_start_method() in ("forkserver", "spawn")
    assert os.getpid() not in _parents()  # a forkserver's (or spawned) worker's is not


def read_raw8(path) -> np.ndarray:
    """A reader registered at run time: 8x8 uint8 pixels, no header."""
    return np.fromfile(path, np.uint8).reshape(1, 8, 8)


@pytest.fixture
def raw8_reader():
    register_reader(".raw8", channel_axis="first")(read_raw8)
    yield
    READERS.remove(".raw8")


@pytest.mark.parametrize("ray_loaded", [False, True])
def test_ingest_workers_read_with_readers_registered_at_run_time(
    tmp_path, monkeypatch, raw8_reader, ray_loaded
):
    if ray_loaded:
        monkeypatch.setitem(sys.modules, "ray", sys.modules.get("ray") or types.ModuleType("ray"))
    else:
        monkeypatch.delitem(sys.modules, "ray", raising=False)
    made = []

    def recording_pool(workers, **kwargs):
        pool = worker_pool(workers, **kwargs)
        made.append(pool._mp_context.get_start_method())
        return pool

    monkeypatch.setattr(ingest_module, "worker_pool", recording_pool)
    rng = np.random.default_rng(0)
    rows, pixels = [], {}
    for i in range(80):  # over the 64 crops below which ingest stays in this process
        pixels[f"c{i}.raw8"] = rng.integers(0, 256, size=(1, 8, 8), dtype=np.uint8)
        pixels[f"c{i}.raw8"].tofile(tmp_path / f"c{i}.raw8")
        rows.append({"path": f"c{i}.raw8", "label": "ab"[i % 2]})
    index = tmp_path / "index.csv"
    pd.DataFrame(rows).to_csv(index, index=False)
    report = ingest(index, tmp_path / "ds", IngestOptions(workers=2), progress=False)
    assert made == (["forkserver"] if ray_loaded else ["fork"])
    assert (report.manifest.num_rows, report.manifest.num_quarantined) == (80, 0)
    from cytotune.engine.data import CellDataset

    ds = CellDataset(tmp_path / "ds")
    sources = ds.metadata()["source"].tolist()
    images = ds.images()
    for k, source in enumerate(sources):
        np.testing.assert_array_equal(images[k], pixels[os.path.basename(source)])
