"""The explain job in this process (executor ``local``) against the same job on Ray actors."""

from __future__ import annotations

import shutil
import threading
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

# bit for bit on the CPU; a GPU's kernels (bf16, cuDNN's algorithm choice) are not repeatable
TOLERANCE = 0.02 if torch.cuda.is_available() else 0.0


def _config(**changes):
    from cytotune.explainers.job.config import ExplainConfig

    return ExplainConfig(study="unused", **changes)


def _explain_copy(trained_study, directory, **settings):
    """``run_explain`` on a copy of the study in ``directory``: the plan, the state and every
    map table by (trial, method), rows in cell order."""
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.layout import maps_path, read_maps
    from cytotune.explainers.job.runner import run_explain

    shutil.copytree(trained_study, directory)
    config = ExplainConfig(study=str(directory), **{"top_k": 2, "batch_size": 16, **settings})
    plan, state = run_explain(config, progress=False, log=lambda *_: None)
    maps = {
        (t.trial_id, m): read_maps(maps_path(plan.study_dir, t.trial_id, m))
        .to_pandas()
        .sort_values("cell_id")
        .reset_index(drop=True)
        for t in plan.trials
        for m in config.method_names
    }
    return plan, state, maps


def _stacked(frame) -> np.ndarray:
    return np.stack([np.frombuffer(m, np.float16) for m in frame["map"]]).astype(np.float32)


def test_auto_runs_here_unless_there_is_something_to_spread_over(monkeypatch):
    from cytotune.explainers.job import executor

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(executor, "ray_nodes", lambda: 0)
    assert executor.resolve_executor(_config()) == "local"
    assert executor.resolve_executor(_config(address="127.0.0.1:6379")) == "ray"
    assert executor.resolve_executor(_config(actors=2)) == "ray"
    assert executor.resolve_executor(_config(actors=1)) == "local"
    assert executor.resolve_executor(_config(executor="ray")) == "ray"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert executor.resolve_executor(_config()) == "ray"
    assert executor.resolve_executor(_config(executor="local")) == "local"
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(executor, "ray_nodes", lambda: 2)  # joined a multi-node Ray
    assert executor.resolve_executor(_config()) == "ray"


def test_auto_shares_several_gpus_of_this_machine_in_this_process(monkeypatch):
    import torch
    from cytotune.explainers.job import executor

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("CYTOTUNE_LOCAL_WORKERS", raising=False)
    monkeypatch.setattr(executor, "ray_nodes", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert executor.resolve_executor(_config()) == "local"
    assert executor.local_devices() == ["cuda:0", "cuda:1"]
    # 4 workers per GPU, interleaved: the first two to get work are on different GPUs
    assert executor.worker_devices() == ["cuda:0", "cuda:1"] * 4
    monkeypatch.setenv("CYTOTUNE_LOCAL_WORKERS", "1")
    assert executor.worker_devices() == ["cuda:0", "cuda:1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CYTOTUNE_LOCAL_WORKERS")
    assert executor.worker_devices() == ["cpu"]


def test_an_unknown_executor_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="executor.*auto.*local.*ray"):
        _config(executor="dask")


def test_prefetch_keeps_order_and_raises_the_producers_error():
    from cytotune.explainers.job.executor import prefetch

    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise OSError("shard unreadable")

    got = []
    with pytest.raises(OSError, match="shard unreadable"):
        for item in prefetch(failing()):
            got.append(item)
    assert got == [1]


def test_prefetch_stops_its_thread_when_the_consumer_stops():
    from cytotune.explainers.job.executor import prefetch

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    stream = prefetch(endless(), depth=2)
    assert next(stream) == 0
    stream.close()
    time.sleep(0.5)
    count = len(produced)
    time.sleep(0.3)
    assert len(produced) == count  # no longer producing
    assert count <= 5  # at most the queue's depth ahead of the consumer (plus items in hand)
    assert not any(t.name == "explain-read" and t.is_alive() for t in threading.enumerate())


def test_maps_in_this_process_equal_the_maps_on_ray_actors(trained_study, tmp_path, ray_local):
    """Same cells, same fold models, same maps and predictions on both executors (on the CPU
    nearly every value to the bit, the rest within a float16 step: the executors cut their
    batches differently, the local one into whole folds, and a CPU convolution's rounding can
    depend on the batch; within bf16 rounding on a GPU)."""
    tables = {}
    for executor in ("local", "ray"):
        methods, stages = ("gradcam", "saliency"), ("maps",)
        plan, state, tables[executor] = _explain_copy(
            trained_study, tmp_path / executor, methods=methods, stages=stages, executor=executor
        )
        assert state.data["executor"] == executor
    assert tables["local"].keys() == tables["ray"].keys()
    for part, local in tables["local"].items():
        ray_maps = tables["ray"][part]
        assert len(local) == len(plan.cells)
        assert local["cell_id"].tolist() == ray_maps["cell_id"].tolist()
        agree = (local["prediction_index"] == ray_maps["prediction_index"]).mean()
        assert agree >= (0.97 if torch.cuda.is_available() else 1.0)
        a, b = _stacked(local), _stacked(ray_maps)
        if torch.cuda.is_available():  # kernels are not bitwise repeatable on a GPU
            np.testing.assert_allclose(a, b, rtol=0.05, atol=0.02 * float(np.abs(b).max()))
        else:
            assert (a == b).mean() > 0.999
            np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-3 * float(np.abs(b).max()))


def test_quality_shares_each_fold_models_random_copies_between_methods(trained_study):
    """Three methods of one trial draw each fold model's random copies once, not three times,
    and score as a context that draws them afresh per method."""
    import pandas as pd
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.plan import build_plan
    from cytotune.explainers.job.scores import QualityContext

    plan = build_plan(ExplainConfig(study=str(trained_study), top_k=1, methods=("saliency",)))
    trial = plan.trials[0]
    sample = plan.cells.sample(n=8, random_state=0)
    methods = ("saliency", "gradcam", "inputxgradient")
    shared = QualityContext(str(plan.dataset.path))
    rows = []
    for m in methods:
        rows += shared.score(trial.fold_dirs, sample, {m: {}}, trial.trial_id, 0, "fp32", False)
    fresh_rows = []
    for m in methods:
        fresh = QualityContext(str(plan.dataset.path))
        fresh_rows += fresh.score(
            trial.fold_dirs, sample, {m: {}}, trial.trial_id, 0, "fp32", False
        )
    folds = sample["fold"].nunique()
    assert shared.copies_made == fresh.copies_made  # the last method alone made as many
    assert shared.copies_made >= 3 * folds  # three full copies per fold model at least

    def table(r):
        return pd.DataFrame(r).set_index(["method", "metric"])["mean"].sort_index()

    pd.testing.assert_series_equal(table(rows), table(fresh_rows), rtol=TOLERANCE)


def test_copies_of_the_previous_trial_are_let_go(trained_study):
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.plan import build_plan
    from cytotune.explainers.job.scores import QualityContext

    plan = build_plan(ExplainConfig(study=str(trained_study), top_k=2, methods=("saliency",)))
    sample = plan.cells.sample(n=4, random_state=0)
    context = QualityContext(str(plan.dataset.path))
    first, second = plan.trials[:2]
    context.score(first.fold_dirs, sample, {"saliency": {}}, first.trial_id, 0, "fp32", False)
    held = len(context._copies)
    context.score(second.fold_dirs, sample, {"saliency": {}}, second.trial_id, 0, "fp32", False)
    assert held > 0
    assert context._copies_of == second.trial_id
    second_models = {id(context.model(str(d))[0]) for d in second.fold_dirs.values()}
    assert {key[0] for key in context._copies} <= second_models  # the first trial's are gone


def test_in_threads_keeps_order_and_lends_each_worker_to_one_thread_at_a_time():
    from cytotune.explainers.job.executor import in_threads

    busy: dict[int, int] = {}
    overlaps = []
    lock = threading.Lock()

    def fn(worker, item):
        with lock:
            busy[worker] = busy.get(worker, 0) + 1
            overlaps.append(busy[worker])
        time.sleep(0.002 * (item % 3))
        with lock:
            busy[worker] -= 1
        return item * 10

    assert list(in_threads(iter(range(40)), [0, 1, 2], fn)) == [i * 10 for i in range(40)]
    assert max(overlaps) == 1  # never two threads on one worker


def test_several_local_workers_give_the_maps_and_scores_of_one(
    trained_study, tmp_path, monkeypatch
):
    """Threads and devices change where the work runs, not what it computes (CPU: bit for
    bit). "3" is 3 workers on each of two devices (two CPUs standing in for two GPUs)."""
    from cytotune.explainers.job import executor

    results = {}
    for workers in ("1", "3"):
        monkeypatch.setenv("CYTOTUNE_LOCAL_WORKERS", workers)
        devices = ["cpu"] * (1 if workers == "1" else 2)
        monkeypatch.setattr(executor, "local_devices", lambda devices=devices: devices)
        _, _, maps = _explain_copy(
            trained_study,
            tmp_path / workers,
            methods=("gradcam", "smoothgrad:n=4"),
            stages=("maps", "quality"),
            quality_cells=12,
            executor="local",
        )
        quality = pd.read_parquet(tmp_path / workers / "explain" / "quality.parquet")
        results[workers] = maps, quality.set_index(["trial_id", "method", "metric"]).sort_index()
    (one, q_one), (three, q_three) = results["1"], results["3"]
    for part, table in one.items():
        assert table["cell_id"].tolist() == three[part]["cell_id"].tolist()
        a, b = _stacked(table), _stacked(three[part])
        np.testing.assert_allclose(a, b, rtol=TOLERANCE, atol=TOLERANCE * float(np.abs(a).max()))
    assert len(q_one) > 0
    pd.testing.assert_series_equal(q_one["mean"], q_three["mean"], rtol=TOLERANCE)


def test_workers_share_models_on_one_device_and_copy_them_to_another(trained_study):
    """Workers on one device use the same fold models (CAM hooks are per thread); a worker on
    another device gets copies of its own, equal to the loaded ones."""
    from cytotune.explainers.job.worker import MapWorker

    from tests.maps import map_worker_kwargs

    kwargs = map_worker_kwargs(trained_study)
    first = MapWorker(**kwargs)
    second = MapWorker(**kwargs, models_from=first)
    assert second.models.keys() == first.models.keys()
    assert all(second.models[k].model is first.models[k].model for k in first.models)
    other = MapWorker(**{**kwargs, "device": "cpu"}, models_from=_on(first, "cuda:1"))
    for key, loaded in first.models.items():
        copy = other.models[key].model
        assert copy is not loaded.model
        for (name, a), (_, b) in zip(loaded.model.state_dict().items(), copy.state_dict().items()):
            assert a.data_ptr() != b.data_ptr(), name
            assert torch.equal(a, b), name


def _on(worker, device: str):
    """``worker`` seen as if it were on ``device`` (its models stay where they are)."""
    import copy

    twin = copy.copy(worker)
    twin.device = torch.device(device)
    return twin


def test_cam_hooks_keep_each_threads_activations(trained_study):
    """Two threads running Grad-CAM on one model at once get the maps of running alone."""
    from concurrent.futures import ThreadPoolExecutor

    from cytotune.engine.train.checkpoint import load_fold
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.plan import build_plan
    from cytotune.explainers.methods.cam import hooked_gradients_and_output

    plan = build_plan(ExplainConfig(study=str(trained_study), top_k=1, methods=("gradcam",)))
    model = load_fold(next(iter(plan.trials[0].fold_dirs.values()))).model
    layer = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    shape = plan.manifest.shape
    inputs = [torch.randn(4, *shape, generator=torch.Generator().manual_seed(s)) for s in range(8)]

    def cam(x):
        acts, grads, _ = hooked_gradients_and_output(model, x, [("layer", layer)], None, {})
        return acts[0] * grads[0]

    alone = [cam(x) for x in inputs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(cam, inputs))
    for a, b in zip(alone, together):
        torch.testing.assert_close(a, b)


def test_the_job_says_where_its_workers_run(trained_study, tmp_path, monkeypatch):
    """The first line names the executor, the worker threads and their devices."""
    from cytotune.explainers.job import executor
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.runner import run_explain

    monkeypatch.setenv("CYTOTUNE_LOCAL_WORKERS", "2")
    monkeypatch.setattr(executor, "local_devices", lambda: ["cpu"])
    shutil.copytree(trained_study, tmp_path / "study")
    lines: list[str] = []
    config = ExplainConfig(
        study=str(tmp_path / "study"), top_k=1, methods=("gradcam",), stages=("maps",),
        limit=8, executor="local",
    )  # fmt: skip
    run_explain(config, progress=False, log=lines.append)
    assert "in this process (2 worker thread(s) on cpu)" in lines[0]


def test_quality_contexts_of_one_device_share_fold_models_and_copies(trained_study, monkeypatch):
    """Two contexts on one device scoring one trial's three methods load each fold model once
    and draw its random copies once (as one context does), score as one context, and let each
    fold model go after its last task and the copies after the trial's last job."""
    import pandas as pd
    from cytotune.explainers.job import scores
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.plan import build_plan

    methods = ("saliency", "gradcam", "inputxgradient")
    config = ExplainConfig(study=str(trained_study), top_k=1, methods=methods, precision="fp32")
    plan = build_plan(config)
    trial = plan.trials[0]
    sample = plan.cells.sample(n=8, random_state=0)
    jobs = [(trial, {m: {}}, False, False) for m in methods]
    caches = []
    fold_cache = scores.FoldCache

    def recorded(*args, **kwargs):
        caches.append(fold_cache(*args, **kwargs))
        return caches[-1]

    monkeypatch.setattr(scores, "FoldCache", recorded)
    monkeypatch.setenv("CYTOTUNE_LOCAL_WORKERS", "2")
    here = SimpleNamespace(dataset=plan.dataset, study_dir=None)  # no traces in the shared study
    shared_rows = [
        r for rows in scores.score_locally(here, config, sample, jobs, False) for r in rows
    ]
    assert len(caches) == 1  # two contexts, one device
    alone = scores.QualityContext(str(plan.dataset.path), cache=fold_cache())
    alone_rows = []
    for _trial, job_methods, *flags in jobs:
        alone_rows += alone.score(
            trial.fold_dirs, sample, job_methods, trial.trial_id, 0, "fp32", *flags
        )
    assert caches[0].loads == alone.loads == sample["fold"].nunique()
    assert caches[0].copies_made == alone.copies_made > 0
    assert caches[0].copies == {}  # let go after the trial's last job
    assert caches[0].models == {}  # each fold model after its fold's last task, never reloaded
    assert caches[0].templates == {}

    def table(r):
        return pd.DataFrame(r).set_index(["method", "metric"])["mean"].sort_index()

    pd.testing.assert_series_equal(table(shared_rows), table(alone_rows), rtol=TOLERANCE)


def test_a_call_that_ran_out_of_memory_is_tried_again_with_half_the_values():
    """with_less_memory: after each CUDA out-of-memory error the call is made again with half
    the input values a call may hold (call_images follows), the limit restored after; past
    its attempts the error is raised."""
    from cytotune.explainers.job.executor import memory_retries, with_less_memory
    from cytotune.explainers.methods.smoothgrad import (
        CALL_VALUES_GPU,
        call_images,
        call_limit,
        current_call_limit,
    )

    seen: list[int | None] = []

    def flaky():
        seen.append(current_call_limit())
        if len(seen) < 3:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return "done"

    before = memory_retries()
    assert with_less_memory(flaky) == "done"
    assert seen == [None, CALL_VALUES_GPU // 2, CALL_VALUES_GPU // 4]
    assert memory_retries() == before + 2
    assert current_call_limit() is None
    x = torch.zeros(2, 1, 64, 64)
    with call_limit(1 << 16):  # 16 crops of 64 x 64: under the default's 256 floor
        assert call_images(None, x) == 16
        with call_limit(1 << 20):  # a nested, larger limit keeps the smaller
            assert call_images(None, x) == 16
        seen.clear()
        assert with_less_memory(flaky) == "done"
        assert seen == [1 << 16, 1 << 15, 1 << 14]
    assert call_images(None, x) == max(256, (1 << 22) // 4096)
    assert call_images(8, x) == 8

    def always():
        raise torch.OutOfMemoryError("CUDA out of memory (test)")

    with pytest.raises(torch.OutOfMemoryError):
        with_less_memory(always, attempts=2)


def test_integrated_gradients_in_smaller_calls_equal_one_call():
    """A call limit splits Integrated Gradients' steps into calls of at most that many images
    (one step of the batch at the least), of equal size; the maps are those of one call
    (float32 sums in another order)."""
    from cytotune.explainers.methods import create_explainer
    from cytotune.explainers.methods.smoothgrad import call_limit

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 3),
    ).eval()  # fmt: skip
    x = torch.randn(5, 1, 8, 8)
    calls: list[int] = []
    model[0].register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    ig = create_explainer("integrated_gradients", model, n_steps=20)
    whole = ig.attribute(x, target=1)
    assert calls == [5, 100]  # the target's forward, then every step image in one call
    calls.clear()
    with call_limit(64 * 12):  # 12 images a call: 2 steps of the 5 images, 10 calls of 10
        split = ig.attribute(x, target=1)
    assert calls == [5] + [10] * 10
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-6)
    calls.clear()
    with call_limit(64 * 3):  # under one step of the batch: one step a call, the least there is
        ig.attribute(x, target=1)
    assert calls == [5] + [5] * 20


def test_a_map_worker_tries_a_method_again_after_running_out_of_memory(trained_study, monkeypatch):
    """A method whose call met a CUDA out-of-memory error is computed again in smaller calls,
    not recorded as failed (its maps equal those of a call that never failed)."""
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.plan import build_plan
    from cytotune.explainers.job.worker import MapWorker
    from cytotune.explainers.methods.gradient import Saliency

    plan = build_plan(ExplainConfig(study=str(trained_study), top_k=1, methods=("saliency",)))
    worker = MapWorker(
        units={t.trial_id: t.fold_dirs for t in plan.trials},
        methods={"saliency": {}},
        manifest=plan.manifest.to_dict(),
        device="cpu",
    )
    loaded = next(iter(worker.models.values()))
    x = torch.randn(3, *plan.manifest.shape)
    expected = worker._attribute("saliency", loaded.model, x, None, {})
    original = Saliency.attribute
    failures = []

    def once(self, *args, **kwargs):
        if not failures:
            failures.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Saliency, "attribute", once)
    again = worker._attribute("saliency", loaded.model, x, None, {})
    assert failures == [1]
    assert isinstance(again, torch.Tensor)
    torch.testing.assert_close(again, expected)


def test_a_quality_method_that_runs_out_of_memory_is_scored_again_never_dropped(
    trained_study, monkeypatch
):
    """A quality method whose scoring met a CUDA out-of-memory error is scored again (the rows
    of a run that never met it); one that always meets it fails the stage, with the error,
    instead of leaving its fold out of the rows."""
    from cytotune.explainers.job import scores
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.plan import build_plan

    config = ExplainConfig(study=str(trained_study), top_k=1, methods=("saliency",))
    plan = build_plan(config)
    here = SimpleNamespace(dataset=plan.dataset, study_dir=None)
    sample = plan.cells.sample(n=6, random_state=0)
    jobs = [(plan.trials[0], {"saliency": {}}, False, False)]
    (expected,) = scores.score_locally(here, config, sample, jobs, False)
    check = scores.sanity_check
    calls = []

    def once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return check(*args, **kwargs)

    monkeypatch.setattr(scores, "sanity_check", once)
    (again,) = scores.score_locally(here, config, sample, jobs, False)
    assert len(calls) == sample["fold"].nunique() + 1
    pd.testing.assert_frame_equal(pd.DataFrame(again), pd.DataFrame(expected))

    def always(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (test)")

    monkeypatch.setattr(scores, "sanity_check", always)
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    with pytest.raises(torch.OutOfMemoryError):
        scores.score_locally(here, config, sample, jobs, False)
