"""cytotune.engine.io: concurrent writers of one path never leave a partial file or a temp file."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from cytotune.engine.io import (
    atomic_directory,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
    atomic_write_text,
    publish_directory,
)

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "explainers", "dashboard", "search_spaces", "cytotune")
SIZE = 1 << 20  # 1 MiB: large enough that a non-atomic write is seen half-done


def _payload(writer: int) -> bytes:
    return bytes([writer]) * SIZE


def _write_many(path: str, writer: int, times: int) -> None:
    for _ in range(times):
        atomic_write_bytes(path, _payload(writer))


def _check_whole(path: Path, writers: int) -> None:
    data = path.read_bytes()
    assert len(data) == SIZE, f"partial file: {len(data)} of {SIZE} bytes"
    assert data[0] < writers
    assert data == _payload(data[0]), "bytes of two writers mixed in one file"


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_concurrent_threads_and_a_reader_see_only_whole_files(tmp_path):
    path = tmp_path / "blob.bin"
    atomic_write_bytes(path, _payload(0))
    stop, seen = threading.Event(), []

    def read() -> None:
        while not stop.is_set():
            _check_whole(path, 4)
            seen.append(1)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda w: _write_many(str(path), w, 10), range(4)))
    finally:
        stop.set()
        reader.join()
    _check_whole(path, 4)
    assert seen, "the reader never ran"
    assert _leftovers(tmp_path) == []


def test_concurrent_processes_leave_one_whole_file_and_no_temp_files(tmp_path):
    path = tmp_path / "blob.bin"
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_write_many, args=(str(path), w, 10)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    _check_whole(path, 3)
    assert _leftovers(tmp_path) == []


def test_concurrent_parquet_writers_of_the_same_table(tmp_path):
    from cytotune.explainers.job.layout import write_frame

    path = tmp_path / "scores.parquet"
    frames = [pd.DataFrame({"writer": [w] * 5000, "value": range(5000)}) for w in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda f: [write_frame(f, path) for _ in range(5)], frames))
    got = pd.read_parquet(path)
    assert got["writer"].nunique() == 1
    pd.testing.assert_frame_equal(got, frames[int(got["writer"][0])])
    assert _leftovers(tmp_path) == []


def test_concurrent_fold_writers(tmp_path):
    from cytotune.engine.data.folds import FoldSet, save_folds

    def folds(seed: int) -> FoldSet:
        assignment = pd.DataFrame(
            {"cell_id": [f"c{i}" for i in range(2000)], "fold": [i % 5 for i in range(2000)]}
        )
        return FoldSet(
            name="cv5", method="kfold", k=5, group=None, stratify=None, seed=seed,
            dataset_hash="d", hash="h", assignment=assignment,
        )  # fmt: skip

    sets = [folds(0) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda f: save_folds(tmp_path, f, overwrite=True), sets))
    directory = tmp_path / "folds"
    assert sorted(p.name for p in directory.iterdir()) == ["cv5.json", "cv5.parquet"]
    assert pd.read_parquet(directory / "cv5.parquet").shape == (2000, 2)
    assert json.loads((directory / "cv5.json").read_text())["k"] == 5


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp_file(tmp_path):
    path = tmp_path / "study.json"
    atomic_write_json(path, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"v": object()})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert json.loads(path.read_text()) == {"v": 1}
    assert _leftovers(tmp_path) == []


def test_files_get_the_umask_permissions_not_mkstemp_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet")
        with atomic_directory(tmp_path / "bundle") as staging:
            (staging / "x").write_text("x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "bundle").stat().st_mode & 0o777 == 0o755


def test_directories_replace_whole_or_not_at_all(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as staging:
        (staging / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "a").write_text("new")
        raise RuntimeError("export failed")
    assert (target / "a").read_text() == "old"
    staging = tmp_path / "new"
    staging.mkdir()
    (staging / "b").write_text("new")
    publish_directory(staging, target)
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert _leftovers(tmp_path) == []


def test_concurrent_directory_publishers_each_land_whole(tmp_path):
    target = tmp_path / "fold_0"

    def publish(writer: int) -> None:
        for i in range(10):
            with atomic_directory(target) as staging:
                for name in ("model.pt", "trainer.pt", "config.json"):
                    (staging / name).write_text(f"{writer}-{i}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(publish, range(4)))
    contents = {p.name: p.read_text() for p in target.iterdir()}
    assert sorted(contents) == ["config.json", "model.pt", "trainer.pt"]
    assert len(set(contents.values())) == 1, f"files of several writers mixed: {contents}"
    assert _leftovers(tmp_path) == []


def test_no_module_renames_files_by_hand():
    """Atomic writes go through cytotune.engine.io only: a hand-rolled temp name and rename
    (fixed ``.tmp`` names collided under concurrent writers) fails here."""
    pattern = re.compile(
        r"os\.replace\(|os\.rename\(|\.rename\((?!columns)|mkstemp|mkdtemp|"
        r"\.replace\((tmp|staging)|[\"']\.tmp[\"']|\.tmp\"\)"
    )
    offenders = []
    for package in PACKAGES:
        for source in (ROOT / package).rglob("*.py"):
            if source == ROOT / "engine" / "io.py":
                continue
            for number, line in enumerate(source.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{source.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == [], "use cytotune.engine.io instead of:\n" + "\n".join(offenders)


def test_files_written_from_many_threads_keep_the_umask(tmp_path, monkeypatch):
    """Atomic writes from 8 threads at once: every file gets 0o640 under umask 0o027 and the
    process's umask is left as it was. Reading the umask by setting it (os.umask only sets)
    raced between threads; a umask call that yields (as a thread switch can) shows it each
    time."""
    import time

    real = os.umask

    def yielding_umask(mask):
        previous = real(mask)
        time.sleep(0.001)
        return previous

    old = real(0o027)
    monkeypatch.setattr(os, "umask", yielding_umask)
    try:

        def write(i):
            return [atomic_write_text(tmp_path / f"{i}-{k}.txt", "x") for k in range(20)]

        with ThreadPoolExecutor(8) as pool:
            paths = [p for ps in pool.map(write, range(8)) for p in ps]
    finally:
        now = real(old)
    assert now == 0o027
    assert {Path(p).stat().st_mode & 0o777 for p in paths} == {0o640}
