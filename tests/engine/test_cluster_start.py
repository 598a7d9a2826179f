"""Ray workers of a search preload the trainable's modules (Ray's worker_process_setup_hook)."""

from __future__ import annotations

import sys

import cytotune.engine.cluster as cluster


def test_preload_worker_imports_the_named_modules(monkeypatch):
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    monkeypatch.setenv(cluster.PRELOAD_ENV, "colorsys,json")
    cluster.preload_worker()
    assert "colorsys" in sys.modules


def test_search_workers_preload_the_trainable_and_timm():
    assert cluster.TRIAL_MODULES == ("cytotune.engine.search.trainable", "timm")
    import importlib

    for name in cluster.TRIAL_MODULES:  # importable names, or every worker would fail to start
        assert importlib.util.find_spec(name) is not None
