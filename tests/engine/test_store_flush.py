"""A results-store flush cut short (the driver killed between two table writes)."""

from __future__ import annotations

import pytest
from cytotune.engine.search.store import StudyStore


class Killed(BaseException):
    """The driver process ending in the middle of a flush."""


@pytest.mark.parametrize("tables_written", [1, 2])
def test_a_flush_cut_short_never_shows_a_completed_trial_without_its_folds(
    tmp_path, monkeypatch, tables_written
):
    store = StudyStore(str(tmp_path / "study"))
    store.upsert("trials", ("t1",), {"trial_id": "t1", "status": "running"})
    store.upsert("epochs", ("t1", 1, -1), {"trial_id": "t1", "epoch": 1, "fold": -1})
    store.flush()
    # the trial completes: its status and its per-fold metrics go out in one flush
    store.upsert("trials", ("t1",), {"status": "completed", "ended_at": 1.0})
    for fold in (0, 1):
        store.upsert("folds", ("t1", fold), {"trial_id": "t1", "fold": fold})
    written = []
    write_bytes = StudyStore.write_bytes

    def write_then_die(self, name, data):
        if len(written) == tables_written:
            raise Killed
        write_bytes(self, name, data)
        written.append(name)

    monkeypatch.setattr(StudyStore, "write_bytes", write_then_die)
    with pytest.raises(Killed):
        store.flush()
    monkeypatch.undo()
    on_disk = StudyStore(str(tmp_path / "study"))
    folds = on_disk.table("folds")
    recorded = not folds.empty and sorted(folds["fold"]) == [0, 1]
    assert on_disk.trial("t1").status == "running" or recorded, written
    store.flush()  # the next flush writes everything
    on_disk = StudyStore(str(tmp_path / "study"))
    assert on_disk.trial("t1").status == "completed"
    assert sorted(on_disk.table("folds")["fold"]) == [0, 1]
