"""The population stage's map sums: added a part at a time (streamed while the maps stage
writes them, or read after it), with the same bits in any order, equal to a geometric mean
computed by hand, and started again when publishing replaced a part that was added."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest
from cytotune.explainers.job import layout
from cytotune.explainers.job.populations import FollowMaps, MapSums, population_of, write_ended

HW = (8, 8)
EPS = 1e-3
RNG = np.random.default_rng(3)


def _rows(cells: list[str], shape=(2, 4, 4)) -> list[dict]:
    rows = []
    for cell in cells:
        values = RNG.normal(size=shape).astype(np.float16)
        rows.append(
            {"cell_id": cell, "trial_id": "t", "method": "m", "fold": 0, "target_index": 0,
             "map": values.tobytes(), "map_shape": list(shape)}
        )  # fmt: skip
    return rows


def _write(directory, name: str, rows: list[dict]):
    return layout.write_maps(pd.DataFrame(rows), directory / name)


def _by_hand(rows: list[dict], groups: pd.Series) -> dict:
    """exp(mean log(map + eps)) - eps per class, each map: positive part summed over channels,
    upsampled (torch's bilinear, via the layout's numpy twin), divided by its maximum."""
    logs: dict = {}
    for row in rows:
        m = np.frombuffer(row["map"], np.float16).reshape(row["map_shape"]).astype(np.float32)
        m = layout.upsample_bilinear(m[None], HW)[0].astype(np.float64)
        m = np.clip(m, 0, None).sum(0)
        m = m / m.max() if m.max() > 0 else m * 0
        logs.setdefault(groups[row["cell_id"]], []).append(np.log(m + EPS))
    return {cls: np.exp(np.mean(v, 0)) - EPS for cls, v in logs.items()}


def test_sums_have_the_same_bits_in_any_part_order_and_equal_a_mean_by_hand(tmp_path):
    cells = [f"c{i}" for i in range(30)]
    groups = pd.Series(["a", "b", "c"] * 10, index=cells)
    rows = _rows(cells)
    table = tmp_path / "m.parquet"
    table.mkdir()
    for k in range(5):
        _write(table, f"part-{k}.parquet", rows[k * 6 : (k + 1) * 6])
    forward = MapSums(["a", "b", "c"], groups, HW, EPS, False).results(table)
    backward = MapSums(["a", "b", "c"], groups, HW, EPS, False)
    parts = sorted(table.glob("part-*.parquet"))
    assert len(parts) == 5
    for path in reversed(parts):
        backward.add(path)
    backward = backward.results(table)
    expected = _by_hand(rows, groups)
    assert sorted(forward) == ["a", "b", "c"]
    for cls in forward:
        assert forward[cls].shape == (1, *HW)
        assert np.array_equal(forward[cls], backward[cls])  # bit for bit
        np.testing.assert_allclose(forward[cls][0], expected[cls], rtol=1e-6, atol=1e-9)


def test_a_part_that_publishing_replaced_is_not_counted(tmp_path):
    """A staging part added while the maps were written, then rewritten by publishing (a batch
    that ran twice): the sums start again from the published table."""
    cells = [f"c{i}" for i in range(12)]
    groups = pd.Series(["a", "b"] * 6, index=cells)
    rows = _rows(cells)
    staging, table = tmp_path / ".m.run.tmp", tmp_path / "m.parquet"
    staging.mkdir()
    table.mkdir()
    _write(staging, "part-old.parquet", rows[:8])
    sums = MapSums(["a", "b"], groups, HW, EPS, False)
    assert sums.add_new(staging) == 1
    assert sums.add_new(staging) == 0  # once per name
    _write(table, "part-x.parquet", rows[:6])
    _write(table, "part-y.parquet", rows[6:])
    got = sums.results(table)
    assert sums.added == {"part-x.parquet", "part-y.parquet"}
    expected = _by_hand(rows, groups)
    for cls in ("a", "b"):
        np.testing.assert_allclose(got[cls][0], expected[cls], rtol=1e-6, atol=1e-9)


def test_following_adds_parts_as_they_appear_until_the_maps_stage_ends(tmp_path):
    cells = [f"c{i}" for i in range(9)]
    groups = pd.Series(["a"] * 9, index=cells)
    rows = _rows(cells)
    staging = tmp_path / ".m.run.tmp"
    ended = tmp_path / ".maps-ended"
    sums = MapSums(["a"], groups, HW, EPS, False)
    seen: list[int] = []
    follow = FollowMaps(staging, ended, poll_s=0.01)

    def maps_stage():  # three parts, one after another, then the end
        staging.mkdir()
        for k in range(3):
            _write(staging, f"part-{k}.parquet", rows[k * 3 : (k + 1) * 3])
            deadline = time.time() + 30
            while len(sums.added) <= k and time.time() < deadline:
                time.sleep(0.01)
            seen.append(len(sums.added))
        write_ended(ended, True)

    writer = threading.Thread(target=maps_stage)
    writer.start()
    assert follow.follow(sums) is True
    writer.join()
    assert seen == [1, 2, 3]  # each part added before the next was written
    write_ended(ended, False)
    assert (
        FollowMaps(staging, ended, poll_s=0.01).follow(MapSums(["a"], groups, HW, EPS, False))
        is False
    )
    # the stage succeeded but this pair failed in it: its staging parts are not used
    write_ended(ended, True, ["maps/t/m"])
    sums = MapSums(["a"], groups, HW, EPS, False)
    assert FollowMaps(staging, ended, "maps/t/m", poll_s=0.01).follow(sums) is False
    assert FollowMaps(staging, ended, "maps/t/other", poll_s=0.01).follow(sums) is True


def test_a_pair_without_a_table_draws_nothing(tmp_path):
    from cytotune.explainers.job.populations import PopulationWork

    work = PopulationWork(
        study_dir=tmp_path, names=("dna",), hw=HW, regression=False, radius=1, threshold=0.5,
        classes=("a",), groups=pd.Series(["a"], index=["c0"]), shape_means={}, eps=EPS,
    )  # fmt: skip
    ended = tmp_path / ".ended"
    write_ended(ended, True)
    assert population_of(work, "t", "m", tmp_path / "none.parquet") is None
    assert (
        population_of(work, "t", "m", tmp_path / "none.parquet", FollowMaps(tmp_path / "s", ended))
        is None
    )
    write_ended(ended, False)
    (tmp_path / "table.parquet").mkdir()
    assert (
        population_of(work, "t", "m", tmp_path / "table.parquet", FollowMaps(tmp_path / "s", ended))
        is None
    )


def test_a_failed_maps_stage_stops_the_following_pairs_and_is_raised(tmp_path, monkeypatch):
    from cytotune.explainers.job import populations, processes
    from cytotune.explainers.job.populations import PopulationWork

    monkeypatch.setenv(processes.TAIL_PROCESSES_ENV, "1")  # the pairs in threads here
    work = PopulationWork(
        study_dir=tmp_path, names=("dna",), hw=HW, regression=False, radius=1, threshold=0.5,
        classes=("a",), groups=pd.Series(["a"], index=["c0"]), shape_means={}, eps=EPS,
    )  # fmt: skip
    ended = tmp_path / ".maps-ended-x"
    jobs = [
        (work, "t", m, tmp_path / f"{m}.parquet", FollowMaps(tmp_path / m, ended, poll_s=0.01))
        for m in ("m1", "m2")
    ]

    class State:
        def mark(self, name):
            pass

    def maps_ready():
        time.sleep(0.1)
        raise RuntimeError("the maps stage failed")

    with pytest.raises(RuntimeError, match="the maps stage failed"):
        populations._drawn_beside_maps(jobs, maps_ready, ended, State())
    assert not ended.exists()  # no signal file left behind


def test_following_can_be_switched_off_and_a_bad_value_says_what_to_give(monkeypatch):
    from cytotune.explainers.job.populations import FOLLOW_ENV, follow_wanted

    monkeypatch.delenv(FOLLOW_ENV, raising=False)
    assert follow_wanted() is True
    monkeypatch.setenv(FOLLOW_ENV, "0")
    assert follow_wanted() is False
    monkeypatch.setenv(FOLLOW_ENV, "yes")
    with pytest.raises(ValueError, match="CYTOTUNE_FOLLOW_MAPS='yes': give 1 .on. or 0"):
        follow_wanted()


def test_a_part_of_the_finished_table_that_cannot_be_read_is_an_error(tmp_path, monkeypatch):
    """Only a staging directory's parts may vanish (published meanwhile); the finished table's
    must all be read, or the population would silently hold fewer cells."""
    cells = [f"c{i}" for i in range(6)]
    groups = pd.Series(["a"] * 6, index=cells)
    table = tmp_path / "m.parquet"
    table.mkdir()
    rows = _rows(cells)
    _write(table, "part-0.parquet", rows[:3])
    _write(table, "part-1.parquet", rows[3:])
    sums = MapSums(["a"], groups, HW, EPS, False)
    real = sums._part

    def gone(path):
        if path.name == "part-1.parquet":
            raise FileNotFoundError(path)
        return real(path)

    monkeypatch.setattr(sums, "_part", gone)
    assert sums.add_new(table) == 1  # following: skipped, looked for again later
    with pytest.raises(FileNotFoundError):
        sums.results(table)
