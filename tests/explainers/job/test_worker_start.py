"""A map worker's start-up: its loading threads' CPU share, its phase timings, and the cuDNN
setting the maps run with."""

from __future__ import annotations

import json
import shutil
import threading

import pytest
import torch


def _threads_seen_by_a_new_thread() -> int:
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


@pytest.fixture
def four_cpu_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


def test_loading_threads_keep_a_share_of_the_cpu_threads_and_no_other_thread_does(
    four_cpu_threads,
):
    """The pool's threads each keep 4 / 2 intra-op threads; a thread that was waiting before
    the pool was made and makes its first torch call after gets all 4, as do new threads."""
    from cytotune.explainers.job.worker import loading_pool

    go, seen = threading.Event(), []

    def waiting_thread():
        go.wait()
        seen.append(torch.get_num_threads())

    earlier = threading.Thread(target=waiting_thread)
    earlier.start()
    with loading_pool(2, share=True) as pool:
        assert torch.get_num_threads() == 4
        go.set()
        earlier.join()
        counts = list(pool.map(lambda _: torch.get_num_threads(), range(8)))
    assert counts == [2] * 8
    assert seen == [4]
    assert _threads_seen_by_a_new_thread() == 4


@pytest.mark.parametrize(("threads", "share", "each"), [(8, True, 1), (1, True, 4), (2, False, 4)])
def test_a_loading_threads_share_is_never_under_one_and_can_be_left_alone(
    four_cpu_threads, threads, share, each
):
    from cytotune.explainers.job.worker import loading_pool

    with loading_pool(threads, share) as pool:
        assert set(pool.map(lambda _: torch.get_num_threads(), range(threads))) == {each}
    assert torch.get_num_threads() == 4


def test_a_bad_share_switch_fails_before_any_model_is_read(trained_study, monkeypatch):
    from cytotune.explainers.job import worker as worker_module

    reads = []
    monkeypatch.setattr(worker_module, "load_fold", lambda *a, **k: reads.append(a))
    monkeypatch.setenv("CYTOTUNE_LOAD_SHARE", "off")
    kwargs, _ = _worker_kwargs(trained_study)
    with pytest.raises(ValueError, match="CYTOTUNE_LOAD_SHARE='off'"):
        worker_module.MapWorker(**kwargs)
    assert reads == []


def test_loading_threads_come_from_the_environment(monkeypatch):
    from cytotune.explainers.job.worker import load_threads

    monkeypatch.delenv("CYTOTUNE_LOAD_THREADS", raising=False)
    assert load_threads() == 8
    monkeypatch.setenv("CYTOTUNE_LOAD_THREADS", "3")
    assert load_threads() == 3
    monkeypatch.setenv("CYTOTUNE_LOAD_THREADS", "many")
    with pytest.raises(ValueError, match="CYTOTUNE_LOAD_THREADS='many'"):
        load_threads()


def _worker_kwargs(trained_study, tmp_path=None):
    """The worker's arguments (writing its record under ``tmp_path`` when given) and how many
    fold models they name."""
    from tests.maps import map_worker_kwargs

    output = {"output": {"study_dir": str(tmp_path), "run_id": "r1"}} if tmp_path else {}
    kwargs = map_worker_kwargs(trained_study, **output)
    return kwargs, sum(len(folds) for folds in kwargs["units"].values())


def test_a_worker_reports_its_loading_per_phase(trained_study, tmp_path, monkeypatch):
    """Every fold model is counted; reading and folding took time (their thread-seconds); the
    record in explain/workers/ carries them."""
    from cytotune.explainers.job.worker import MapWorker

    monkeypatch.setenv("CYTOTUNE_LOAD_THREADS", "2")
    kwargs, fold_models = _worker_kwargs(trained_study, tmp_path)
    worker = MapWorker(**kwargs)
    assert fold_models > 1
    assert worker.timing["models_loaded"] == fold_models == len(worker.models)
    assert worker.norms_folded > 0
    assert worker.timing["load_read_s"] > 0
    assert worker.timing["load_fold_s"] > 0
    assert worker.timing["load_move_s"] >= 0
    (record,) = (tmp_path / "explain" / "workers").glob("*.json")
    saved = json.loads(record.read_text())
    assert saved["models_loaded"] == fold_models
    assert saved["load_fold_s"] == worker.timing["load_fold_s"]


def test_a_worker_that_folds_nothing_spends_no_folding_time(trained_study, monkeypatch):
    from cytotune.explainers.job.worker import MapWorker

    monkeypatch.setenv("CYTOTUNE_FOLD_NORMS", "0")
    kwargs, fold_models = _worker_kwargs(trained_study)
    worker = MapWorker(**kwargs)
    assert worker.norms_folded == 0
    assert worker.timing["models_loaded"] == fold_models
    assert worker.timing["load_fold_s"] < worker.timing["load_read_s"]


def test_cudnn_heuristics_pin_benchmark_off_and_restore_it():
    from cytotune.explainers.job.maps import cudnn_heuristics

    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = True
        with pytest.raises(KeyError), cudnn_heuristics():
            assert torch.backends.cudnn.benchmark is False
            raise KeyError("a failed batch")
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = before


def test_the_maps_run_on_cudnn_heuristics_whatever_the_caller_set(
    trained_study, tmp_path, monkeypatch
):
    """A caller that trained with ``cudnn.benchmark`` on (a notebook) does not make every map
    thread autotune: the workers see it off, and the caller gets its setting back."""
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.runner import run_explain
    from cytotune.explainers.job.worker import MapWorker

    seen: list[bool] = []
    explain = MapWorker.explain

    def recording(self, table):
        seen.append(torch.backends.cudnn.benchmark)
        return explain(self, table)

    monkeypatch.setattr(MapWorker, "explain", recording)
    shutil.copytree(trained_study, tmp_path / "study")
    config = ExplainConfig(
        study=str(tmp_path / "study"), top_k=1, methods=("gradcam",), stages=("maps",),
        limit=8, executor="local",
    )  # fmt: skip
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = True
        run_explain(config, progress=False, log=lambda *_: None)
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = before
    assert seen
    assert not any(seen)
