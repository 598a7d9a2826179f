"""A search and an explain job across a real multi-node Ray cluster on this machine (issue 15).

``ray.cluster_utils.Cluster`` starts two nodes of 2 CPUs each (the head, which the test
process drives, and worker ``b``), each its own raylet with its own resources; the study lives
on a path every node reaches. The two trials start one on each node; worker ``b`` is removed
once its trial has a checkpoint, and that trial must continue from the checkpoint on the head,
with every trial stored exactly once, the same scores as the configurations trained in this
process without Ray, and nothing written outside the study directory. A new worker ``c`` then
joins and the explain job spreads its actors over the head and ``c``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from .multinode import (
    check_maps_against_direct,
    checkpointed_trial_on,
    file_tree,
    reference_scores,
    start_cluster,
    study_config,
    tune_results,
    write_workspace,
)

pytestmark = pytest.mark.slow

EPOCHS = 4


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes of 2 CPUs each: the head (where this process, the driver, connects) and
    worker ``b``. A trial takes 2 CPUs, so the two trials of a study run one on each node."""
    with start_cluster(head_cpus=2, workers={"node_b": 2}) as (ray_cluster, head, (worker,)):
        yield ray_cluster, head, worker


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return write_workspace(tmp_path_factory.mktemp("multinode"))


@pytest.fixture(scope="module")
def searched(cluster, workspace):
    """A 2-trial study across both nodes; worker ``b`` is removed from the cluster once the
    trial running there has written its first checkpoint."""
    from cytotune.engine.search.runner import run_search

    ray_cluster, _, worker = cluster
    study = study_config(workspace, "spread", trials=2, epochs=EPOCHS)
    home = Path.home() / "ray_results"
    before = file_tree(workspace), sorted(os.listdir(home)) if home.is_dir() else None
    cwd_before = sorted(os.listdir(Path.cwd()))
    outcome: dict = {}

    def drive():
        try:
            outcome["store"] = run_search(study, address=ray_cluster.address, verbose=False)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            outcome["error"] = exc

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    tune_dir = Path(study.study_dir) / "tune"
    deadline, lost = time.time() + 90, None
    while time.time() < deadline and driver.is_alive() and lost is None:
        lost = checkpointed_trial_on(worker.node_id, tune_dir, EPOCHS)
        time.sleep(0.05)
    assert lost is not None, "no trial reached a checkpoint on worker b while it ran"
    ray_cluster.remove_node(worker)
    driver.join(timeout=120)
    assert not driver.is_alive(), outcome.get("error")
    assert "error" not in outcome, outcome.get("error")
    return study, outcome["store"], lost, before, cwd_before


def test_trials_spread_over_nodes_and_match_a_one_node_run(cluster, searched):
    _, head, worker = cluster
    study, store, lost, _, _ = searched
    trials = store.table("trials")
    assert len(trials) == 2
    assert set(trials["status"]) == {"completed"}
    first_nodes = {row.split(",")[0] for row in trials["nodes"]}
    assert first_nodes == {head.node_id, worker.node_id}  # one trial started on each node
    # same seed, same sampled configurations, same scores as one process without Ray; the
    # trial moved to the head after its node was lost included (restored, not restarted)
    for row in trials.to_dict("records"):
        expected = reference_scores(study, json.loads(row["params"]))
        for key in ("val/log_loss", "val/auc_macro", "val/balanced_accuracy", "train_loss"):
            assert row[key] == pytest.approx(expected[key], abs=1e-6), (row["trial_id"], key)


def test_a_lost_worker_node_loses_no_trial_and_its_trial_resumes_elsewhere(cluster, searched):
    """The lost node's trial is retried on the head from its checkpoint; every trial, epoch
    and fold is stored exactly once."""
    _, head, worker = cluster
    study, store, lost, _, _ = searched
    trials = store.table("trials").set_index("trial_id")
    assert trials.index.is_unique
    assert (trials["epochs_done"] == EPOCHS).all()
    moved = trials.loc[lost]
    assert moved["retries"] == 1
    assert "node" in moved["last_error"].lower()
    assert moved["nodes"].split(",") == [worker.node_id, head.node_id]
    assert moved["node_id"] == head.node_id
    # the first result after the restore is past the checkpointed epoch (the trial did not
    # start again at epoch 1). Tune's own log is not the record: on a restart Tune copies it back
    # from the trial's storage, so a line written after the last sync may be gone, and an epoch
    # the lost node reported after its checkpoint is reported again. The store holds every
    # epoch exactly once (below).
    results = tune_results(Path(store.tune_dir) / f"trial_{lost}")
    starts = [r["epoch"] for r in results if r["iterations_since_restore"] == 1]
    assert len(starts) == 2
    assert starts[0] == 1
    assert starts[1] > 1
    epochs = store.table("epochs")
    assert not epochs.duplicated(["trial_id", "epoch", "fold"]).any()
    assert len(epochs[epochs["fold"] == -1]) == 2 * EPOCHS
    moved_epochs = epochs[(epochs["trial_id"] == lost) & (epochs["fold"] == -1)]["epoch"]
    assert sorted(moved_epochs) == list(range(1, EPOCHS + 1))
    folds = store.table("folds")
    assert sorted(folds["trial_id"].value_counts().to_dict().items()) == sorted(
        (t, 2) for t in trials.index
    )


def test_nothing_is_written_outside_the_study_directory(workspace, searched):
    _, store, _, (files_before, results_before), cwd_before = searched
    study_dir = Path(store.path)
    assert study_dir.is_relative_to(workspace / "studies")
    after = file_tree(workspace, skip=study_dir)
    changed = {p for p in set(after) | set(files_before) if after.get(p) != files_before.get(p)}
    assert not changed, sorted(changed)
    home = Path.home() / "ray_results"
    assert (sorted(os.listdir(home)) if home.is_dir() else None) == results_before
    assert sorted(os.listdir(Path.cwd())) == cwd_before
    for checkpoint in store.table("trials")["checkpoint"]:
        assert Path(checkpoint).is_relative_to(study_dir)
        assert Path(checkpoint).is_dir()


def test_trial_page_names_the_nodes(searched):
    from cytotune.dashboard.data import Study
    from cytotune.dashboard.pages import trial

    _, store, lost, _, _ = searched
    row = store.table("trials").set_index("trial_id").loc[lost]
    page = trial.layout(None, Study("spread", Path(store.path)), {"arg": lost})
    found = [c for c in _walk(page) if getattr(c, "id", None) == "trial-node"]
    assert len(found) == 1
    assert found[0].children == " → ".join(row["nodes"].split(","))


def _walk(component):
    yield component
    children = getattr(component, "children", None)
    if isinstance(children, (list, tuple)):
        for child in children:
            yield from _walk(child)
    elif children is not None and not isinstance(children, str):
        yield from _walk(children)


def test_explain_job_spreads_its_actors_and_matches_a_direct_computation(cluster, searched):
    """A new worker ``c`` joins; the explain job's two actors run on the head and on ``c``
    and every cell's map equals the map computed in this process."""
    import ray._private.state
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.layout import maps_path, read_maps
    from cytotune.explainers.job.runner import run_explain

    ray_cluster, head, _ = cluster
    joined = ray_cluster.add_node(num_cpus=2, resources={"node_c": 1})
    ray_cluster.wait_for_nodes()
    _, store, _, _, _ = searched
    config = ExplainConfig(
        study=store.path, top_k=1, methods=("gradcam",), stages=("maps",), actors=2,
        batch_size=16, address=ray_cluster.address,
    )  # fmt: skip
    plan, state = run_explain(config, progress=False, log=lambda *_: None)
    assert state.data["status"] == "finished"
    assert not state.data.get("failures")
    explain_actors = [
        a for a in ray._private.state.actors().values() if "MapWorker" in a["ActorClassName"]
    ]
    assert {a["Address"]["NodeID"] for a in explain_actors} == {head.node_id, joined.node_id}
    (trial,) = plan.trials
    frame = read_maps(maps_path(plan.study_dir, trial.trial_id, "gradcam")).to_pandas()
    assert sorted(frame["cell_id"]) == sorted(plan.cells["cell_id"])  # each cell once
    for fold in (0, 1):
        check_maps_against_direct(plan, frame[frame["fold"] == fold], trial, fold)
