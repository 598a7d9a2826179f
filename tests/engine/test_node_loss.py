"""Losing a driver or an explain actor's node on a real multi-node Ray cluster (issue 15, item 2).

``ray.cluster_utils.Cluster`` starts the head (3 CPUs; this process joins it) and worker ``b``
(2 CPUs). ``cytotune search`` runs as its own process against the cluster and is killed
(SIGKILL to its process group) once a trial has completed; the nodes stay up and
``cytotune search --resume`` must finish the study with every trial stored once and no
completed trial run again. The explain job then runs on that study with one actor on each
node, and worker ``b`` is removed while its actor holds a batch whose parts it has written. The
job must finish with every (trial, method, cell) map stored once and equal to the maps its
kernel computes in this process without Ray.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from cytotune.explainers.job.worker import MapWorker

from .multinode import (
    alive_actors,
    reference_scores,
    start_cluster,
    study_file,
    tune_results,
    wait_for,
    write_workspace,
)

pytestmark = pytest.mark.slow

TRIALS, EPOCHS = 3, 2
CLI = textwrap.dedent("""
    import sys
    from cytotune.engine.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def cluster():
    """The head has 3 CPUs: after ``b`` is lost it holds both explain actors (1 CPU each) and
    still runs the job's read tasks."""
    with start_cluster(head_cpus=3, workers={"node_b": 2}) as (ray_cluster, head, (worker,)):
        yield ray_cluster, head, worker


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return write_workspace(tmp_path_factory.mktemp("node_loss"))


def _search(path: Path, address: str, *extra: str) -> list[str]:
    args = ["search", "--config", str(path), "--address", address, "--quiet", *extra]
    return [sys.executable, "-c", CLI, *args]


@pytest.fixture(scope="module")
def resumed(cluster, workspace):
    """A 3-trial study (one trial per node at a time) whose driver is killed once a trial has
    completed, then resumed with ``--resume``; the nodes stay up throughout."""
    from cytotune.engine.search import StudyConfig, StudyStore

    ray_cluster, _, _ = cluster
    path = study_file(workspace, "resumed", trials=TRIALS, epochs=EPOCHS)
    study = StudyConfig.from_yaml(path)
    store = StudyStore(study.study_dir)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(
        _search(path, ray_cluster.address), env=env, start_new_session=True
    )  # fmt: skip

    def completed():
        if driver.poll() is not None:  # ended by itself: the assert below says so
            return True
        trials = store.table("trials") if store.exists() else pd.DataFrame()
        return not trials.empty and (trials["status"] == "completed").sum() >= 1

    try:
        wait_for(completed, 120, "a completed trial", interval=0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    killed_at = time.time()
    assert driver.returncode == -signal.SIGKILL, "the search ended before it was killed"
    before = store.table("trials")
    start = time.perf_counter()
    result = subprocess.run(
        _search(path, ray_cluster.address, "--resume"), env=env, timeout=300, capture_output=True
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return study, store, before, killed_at, time.perf_counter() - start


def test_a_killed_driver_resumes_on_the_cluster_without_losing_or_repeating_trials(
    cluster, resumed
):
    _, head, worker = cluster
    study, store, before, killed_at, _ = resumed
    done_before = before[before["status"] == "completed"].set_index("trial_id")
    assert 1 <= len(done_before) < TRIALS, before[["trial_id", "status"]]
    after = store.table("trials")
    assert len(after) == TRIALS
    assert after["trial_id"].is_unique
    assert set(after["status"]) == {"completed"}
    assert (after["epochs_done"] == EPOCHS).all()
    after = after.set_index("trial_id")
    # the trials completed before the kill are kept as they were: same end, same scores
    kept = after.loc[done_before.index]
    assert (kept["ended_at"] == done_before["ended_at"]).all()
    scores = ["val/log_loss", "val/balanced_accuracy", "train_loss", "epochs_done"]
    np.testing.assert_array_equal(kept[scores].to_numpy(float), done_before[scores].to_numpy(float))
    # and not run again from the start. Tune snapshots its experiment state every few seconds
    # while the store records a trial's end at once: a kill in between leaves the trial
    # running in Tune's snapshot, and --resume continues it from the checkpoint that snapshot
    # names (its last epoch is trained again; the store keeps its first record, above). Tune's
    # log (result.json) says so; it is read by time, not by line count, since Tune may copy
    # back lines written before the kill that had not reached the file yet.
    for trial_id in done_before.index:
        for result in tune_results(Path(store.tune_dir) / f"trial_{trial_id}"):
            if result["timestamp"] > killed_at:  # reported by the resumed search
                assert result["epoch"] - result["iterations_since_restore"] >= 1, result
    # the study ran on both nodes
    nodes = {n for row in after["nodes"] for n in row.split(",")}
    assert nodes == {head.node_id, worker.node_id}
    epochs = store.table("epochs")
    assert not epochs.duplicated(["trial_id", "epoch", "fold"]).any()
    assert sorted(epochs[epochs["fold"] == -1].groupby("trial_id").size()) == [EPOCHS] * TRIALS
    folds = store.table("folds")
    assert sorted(folds["trial_id"].value_counts()) == [2] * TRIALS
    # the trials the kill interrupted (or that had not started) score as if trained in one
    # go in this process without Ray: resumed from their checkpoints, not restarted wrongly
    for trial_id in after.index.difference(done_before.index):
        row = after.loc[trial_id]
        expected = reference_scores(study, json.loads(row["params"]))
        for key in ("val/log_loss", "val/balanced_accuracy", "train_loss"):
            assert row[key] == pytest.approx(expected[key], abs=1e-6), (trial_id, key)


class SlowMapWorker(MapWorker):
    """The explain actor, marking each batch it has written (file ``<node id>-<uuid>`` in
    ``marks``) and then holding on to it for ``hold`` seconds before returning it: a node
    removed during that time loses a batch whose parts are already written."""

    marks = ""
    hold = 0.6

    def __call__(self, table):
        import ray

        out = super().__call__(table)
        node = ray.get_runtime_context().get_node_id()
        (Path(self.marks) / f"{node}-{uuid.uuid4().hex[:8]}").touch()
        time.sleep(self.hold)
        return out


def _maps(plan, methods) -> dict[tuple[str, str], pd.DataFrame]:
    """The job's stored map tables, by (trial, method), rows in cell order."""
    from cytotune.explainers.job.layout import maps_path, read_maps

    return {
        (t.trial_id, m): read_maps(maps_path(plan.study_dir, t.trial_id, m))
        .to_pandas()
        .sort_values("cell_id")
        .reset_index(drop=True)
        for t in plan.trials
        for m in methods
    }


def _maps_without_ray(plan, config) -> dict[tuple[str, str], pd.DataFrame]:
    """The same maps from the job's kernel called in this process on every planned cell, on
    one thread like a 1-CPU actor: a run that loses no node."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from cytotune.explainers.job.maps import AttachFold

    names = pq.read_schema(plan.dataset.shard_paths[0]).names
    columns = ["cell_id", "image", "label", *(c for c in ("mask", "evidence") if c in names)]
    table = pa.concat_tables(pq.read_table(p, columns=columns) for p in plan.dataset.shard_paths)
    table = AttachFold(plan.cells["cell_id"].to_numpy(), plan.cells["fold"].to_numpy())(table)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        worker = MapWorker(
            {t.trial_id: t.fold_dirs for t in plan.trials},
            {m: config.method_options[m] for m in config.method_names},
            plan.manifest.to_dict(),
            device="cpu",
        )
        frame = worker(table).to_pandas()
    finally:
        torch.set_num_threads(threads)
    assert frame["error"].isna().all(), frame["error"].dropna().unique()
    return {
        key: group.sort_values("cell_id").reset_index(drop=True)
        for key, group in frame.groupby(["trial_id", "method"])
    }


def test_explain_job_finishes_when_an_actor_node_is_lost(cluster, resumed, tmp_path):
    import ray._private.state
    import ray.cloudpickle
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.layout import decode_map
    from cytotune.explainers.job.pool import run_actor_pool
    from cytotune.explainers.job.runner import run_explain

    ray_cluster, head, worker = cluster
    _, store, _, _, _ = resumed
    methods = ("gradcam", "saliency")
    config = ExplainConfig(
        study=store.path, top_k=2, methods=methods, stages=("maps",), actors=2, batch_size=8,
        address=ray_cluster.address,
    )  # fmt: skip
    SlowMapWorker.marks = str(tmp_path)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors get the class
    outcome: dict = {}

    def explain():
        try:
            outcome["result"] = run_explain(config, progress=False, log=lambda *_: None)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            outcome["error"] = exc

    slow = functools.partial(run_actor_pool, worker=SlowMapWorker)
    with mock.patch("cytotune.explainers.job.maps.run_actor_pool", slow):
        job = threading.Thread(target=explain, daemon=True)
        job.start()
        # worker b's actor has written a batch and holds it: remove b now
        wait_for(lambda: list(tmp_path.glob(f"{worker.node_id}-*")), 120, "a batch on b")
        assert job.is_alive()
        parts = list(Path(store.path, "explain", "maps").glob("*/.*.tmp/*.parquet"))
        ray_cluster.remove_node(worker)
        job.join(timeout=120)
    assert not job.is_alive(), outcome.get("error")
    assert "error" not in outcome, outcome.get("error")
    plan, state = outcome["result"]
    assert state.data["status"] == "finished"
    assert not state.data.get("failures")
    assert parts, "no part was written before the node was lost"
    restarted = [
        a for a in ray._private.state.actors().values()
        if "MapWorker" in a["ActorClassName"] and a["NumRestarts"] >= 1
    ]  # fmt: skip
    assert restarted, "no explain actor was restarted"
    assert not alive_actors("MapWorker", worker.node_id)
    # every (trial, method, cell) once, equal to the maps of a run that lost no node
    maps, reference = _maps(plan, methods), _maps_without_ray(plan, config)
    assert sorted(maps) == sorted(reference)
    assert len(maps) == 2 * len(methods)
    cells = sorted(plan.cells["cell_id"])
    for key, frame in maps.items():
        assert frame["cell_id"].tolist() == cells, key  # sorted: each cell exactly once
        assert state.data["parts"][f"maps/{key[0]}/{key[1]}"]["rows"] == len(cells)
        ref = reference[key]
        for column in ("cell_id", "fold", "prediction_index", "target_index"):
            assert frame[column].tolist() == ref[column].tolist(), (key, column)
        got = np.stack([decode_map(m, s) for m, s in zip(frame["map"], frame["map_shape"])])
        want = np.stack([decode_map(m, s) for m, s in zip(ref["map"], ref["map_shape"])])
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
