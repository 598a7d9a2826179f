"""The search proposes no trial that the time left cannot pay for (engine/search/deadline.py)."""

from __future__ import annotations

import time

import pytest
from cytotune.engine.search.deadline import DEADLINE, Deadline


def test_no_budget_or_no_result_yet_never_stops():
    clock = Deadline()
    clock.start(None)
    clock.record("a", {"time_total_s": 1e9})
    assert not clock.too_late()
    clock.start(0.001)  # a budget, but no trial has reported: nothing to go by
    time.sleep(0.01)
    assert not clock.too_late()


def test_too_late_when_time_left_is_under_the_quickest_first_result():
    clock = Deadline()
    clock.start(5.0)
    clock.record("slow", {"time_total_s": 30.0})
    assert clock.too_late()  # 5 s left < 30 s
    clock.record("quick", {"time_total_s": 2.0})
    assert not clock.too_late()  # 5 s left > 2 s: the quickest counts
    clock.record("quick", {"time_total_s": 9.0})  # a later result of the same trial
    assert clock.first_result_s == {"slow": 30.0, "quick": 2.0}
    clock.start(60.0)  # a resumed run counts from its own budget and results
    assert clock.first_result_s == {}


def test_the_searcher_finishes_instead_of_proposing_a_trial_too_late(tmp_path):
    pytest.importorskip("optuna")
    from cytotune.engine.search.resumable import ResumableOptunaSearch
    from ray import tune
    from ray.tune.search import Searcher

    searcher = ResumableOptunaSearch(
        space={"x": tune.uniform(0, 1)}, metric="score", mode="max", seed=0
    )
    try:
        DEADLINE.start(100.0)
        first = searcher.suggest("t0")
        assert isinstance(first, dict)
        assert 0 <= first["x"] <= 1
        searcher.on_trial_result(
            "t0", {"score": 0.5, "time_total_s": 500.0, "training_iteration": 1}
        )
        assert searcher.suggest("t1") == Searcher.FINISHED  # 100 s left < 500 s
        DEADLINE.start(1000.0)
        DEADLINE.record("t0", {"time_total_s": 500.0})
        assert isinstance(searcher.suggest("t2"), dict)
    finally:
        DEADLINE.start(None)
