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

import functools
import json
import os
import threading
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import yaml
from cytotune.engine.search import StudyConfig

pytestmark = pytest.mark.slow

EPOCHS = 4

SPACE = {
    "name": "tiny",
    "default_family": "small_cnn",
    "families": {
        "small_cnn": {
            "conv_layers": {"type": "int", "low": 1, "high": 2, "default": 2},
            "filters": {"type": "categorical", "choices": [4, 8], "default": 8},
            "dense_units": 16,
            "dense_layers": 1,
            "dropout": 0.0,
        }
    },
    "train": {
        "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True, "default": 3e-3},
        "batch_size": 32,
    },
}


def _tree(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (outside ``skip``) with its modification time and size."""
    out = {}
    for path in root.rglob("*"):
        if skip is not None and path.is_relative_to(skip):
            continue
        if path.is_file():
            stat = path.stat()
            out[str(path)] = (stat.st_mtime_ns, stat.st_size)
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two Ray nodes of 2 CPUs each: the head (where this process, the driver, connects) and
    worker ``b``. A trial takes 2 CPUs, so the two trials of a study run one on each node."""
    import ray
    from cytotune.engine.cluster import ensure_ray
    from ray.cluster_utils import Cluster

    was_local = ray.is_initialized()  # the session's one-node Ray (tests/conftest.py)
    ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {"node_head": 1}, "include_dashboard": False},
    )
    # Cluster notes its address in /tmp/ray/ray_current_cluster, where any ray.init() without
    # an address on this machine would find it and join: only this test may use it
    ray._common.utils.reset_ray_address()
    worker = cluster.add_node(num_cpus=2, resources={"node_b": 1})
    cluster.wait_for_nodes()
    ensure_ray(cluster.address, log=None)
    yield cluster, cluster.head_node, worker
    ray.shutdown()
    cluster.shutdown()
    if was_local:
        ensure_ray(num_cpus=2, log=None)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from cytotune.engine.data import DatasetWriter
    from cytotune.engine.data.folds import make_folds, save_folds
    from cytotune.engine.synth import write_dataset

    root = tmp_path_factory.mktemp("multinode")
    # shards of 32 rows: Ray Data gets several read tasks, so both explain actors get work
    with mock.patch(
        "cytotune.engine.synth.generate.DatasetWriter", functools.partial(DatasetWriter, rows_per_shard=32)
    ):
        write_dataset("metastasis", root / "dataset", n=128, size=24, seed=0, progress=False)
    # the folds up front, so the search itself has nothing to write into the dataset
    save_folds(root / "dataset", make_folds(root / "dataset", k=2, group="well", name="k2-well"))
    (root / "tiny.yaml").write_text(yaml.safe_dump(SPACE))
    return root


def _study(root: Path, name: str) -> StudyConfig:
    data = {
        "name": name,
        "dataset": "dataset",
        "folds": {"k": 2, "group": "well"},
        "space": "tiny.yaml",
        "budget": {"trials": 2, "max_epochs": EPOCHS, "grace_epochs": 1, "race": "epochs"},
        "resources": {"cpus": 2},
        "objective": {"metric": "balanced_accuracy"},
        "train": {"loader": "inprocess", "augment": "none"},
        "sampler": "random",
        "scheduler": "none",
        "seed": 3,
        "storage": "studies",
        "max_failures": 2,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return StudyConfig.from_yaml(path)


def _reference(study: StudyConfig, params: dict) -> dict:
    """The configuration trained in this process, without Ray, on the 2 threads Ray gives a
    2-CPU trial."""
    import torch
    from cytotune.engine.search.crossval import CrossValidation

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cv = CrossValidation(study, params)
        while not cv.finished:
            report, _ = cv.step()
    finally:
        torch.set_num_threads(threads)
    return report


@pytest.fixture(scope="module")
def searched(cluster, workspace):
    """A 2-trial study across both nodes; worker ``b`` is removed from the cluster once the
    trial running there has written its first checkpoint."""
    from cytotune.engine.search.runner import run_search

    ray_cluster, _, worker = cluster
    study = _study(workspace, "spread")
    home = Path.home() / "ray_results"
    before = _tree(workspace), sorted(os.listdir(home)) if home.is_dir() else None
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
        lost = _checkpointed_trial_on(worker.node_id, tune_dir)
        time.sleep(0.05)
    assert lost is not None, "no trial reached a checkpoint on worker b while it ran"
    ray_cluster.remove_node(worker)
    driver.join(timeout=120)
    assert not driver.is_alive() and "error" not in outcome, outcome.get("error")
    return study, outcome["store"], lost, before, cwd_before


def _checkpointed_trial_on(node_id: str, tune_dir: Path) -> str | None:
    """A running trial whose Tune actor lives on ``node_id`` and that has a checkpoint."""
    import ray._private.state

    pids = {
        a["Pid"]
        for a in ray._private.state.actors().values()
        if a["State"] == "ALIVE" and a["Address"]["NodeID"] == node_id
    }
    for trial_dir in tune_dir.glob("trial_*"):
        results = _results(trial_dir)
        if results and results[-1]["epoch"] < EPOCHS and results[-1]["pid"] in pids:
            if any(trial_dir.glob("checkpoint_*")):
                return trial_dir.name[len("trial_") :]
    return None


def _results(trial_dir: Path) -> list[dict]:
    """Tune's own record of a trial's reported results (result.json, one line each)."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_trials_spread_over_nodes_and_match_a_one_node_run(cluster, searched):
    _, head, worker = cluster
    study, store, lost, _, _ = searched
    trials = store.table("trials")
    assert len(trials) == 2 and set(trials["status"]) == {"completed"}
    first_nodes = {row.split(",")[0] for row in trials["nodes"]}
    assert first_nodes == {head.node_id, worker.node_id}  # one trial started on each node
    # same seed, same sampled configurations, same scores as one process without Ray; the
    # trial moved to the head after its node was lost included (restored, not restarted)
    for row in trials.to_dict("records"):
        expected = _reference(study, json.loads(row["params"]))
        for key in ("val/log_loss", "val/auc_macro", "val/balanced_accuracy", "train_loss"):
            assert row[key] == pytest.approx(expected[key], abs=1e-6), (row["trial_id"], key)


def test_a_lost_worker_node_loses_no_trial_and_its_trial_resumes_elsewhere(cluster, searched):
    """The lost node's trial is retried on the head from its checkpoint; every trial, epoch
    and fold is stored exactly once."""
    _, head, worker = cluster
    study, store, lost, _, _ = searched
    trials = store.table("trials").set_index("trial_id")
    assert trials.index.is_unique and (trials["epochs_done"] == EPOCHS).all()
    moved = trials.loc[lost]
    assert moved["retries"] == 1 and "node" in moved["last_error"].lower()
    assert moved["nodes"].split(",") == [worker.node_id, head.node_id]
    assert moved["node_id"] == head.node_id
    # the first result after the restore is past the checkpointed epoch (the trial did not
    # start again at epoch 1). Tune's own log is not the record: on a restart Tune copies it back
    # from the trial's storage, so a line written after the last sync may be gone, and an epoch
    # the lost node reported after its checkpoint is reported again. The store holds every
    # epoch exactly once (below).
    results = _results(Path(store.tune_dir) / f"trial_{lost}")
    starts = [r["epoch"] for r in results if r["iterations_since_restore"] == 1]
    assert len(starts) == 2 and starts[0] == 1 and starts[1] > 1
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
    after = _tree(workspace, skip=study_dir)
    changed = {p for p in set(after) | set(files_before) if after.get(p) != files_before.get(p)}
    assert not changed, sorted(changed)
    home = Path.home() / "ray_results"
    assert (sorted(os.listdir(home)) if home.is_dir() else None) == results_before
    assert sorted(os.listdir(Path.cwd())) == cwd_before
    for checkpoint in store.table("trials")["checkpoint"]:
        assert Path(checkpoint).is_relative_to(study_dir) and Path(checkpoint).is_dir()


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
    from cytotune.explainers.job.layout import maps_path
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
    assert state.data["status"] == "finished" and not state.data.get("failures")
    explain_actors = [
        a for a in ray._private.state.actors().values() if "MapWorker" in a["ActorClassName"]
    ]
    assert {a["Address"]["NodeID"] for a in explain_actors} == {head.node_id, joined.node_id}
    (trial,) = plan.trials
    frame = pd.read_parquet(maps_path(plan.study_dir, trial.trial_id, "gradcam"))
    assert sorted(frame["cell_id"]) == sorted(plan.cells["cell_id"])  # each cell once
    for fold in (0, 1):
        _check_maps_against_direct(plan, frame[frame["fold"] == fold], trial, fold)


def _check_maps_against_direct(plan, frame, trial, fold: int) -> None:
    import torch
    from cytotune.engine.data.augment import normalize
    from cytotune.engine.data.dataset import CellDataset
    from cytotune.engine.train.checkpoint import load_model
    from cytotune.explainers import create_explainer
    from cytotune.explainers.job.layout import decode_map
    from cytotune.explainers.job.worker import cam_layers

    rows = plan.cells.set_index("cell_id").loc[frame["cell_id"], "row"].to_numpy()
    model, cfg = load_model(trial.fold_dirs[fold])
    norm = cfg["data"]["normalization"]
    x = normalize(
        torch.from_numpy(CellDataset(plan.dataset.path).images(rows).astype(np.float32)),
        torch.tensor(norm["offset"]),
        torch.tensor(norm["scale"]),
    )
    with torch.no_grad():
        target = model(x).argmax(1)
    np.testing.assert_array_equal(frame["prediction_index"], target.numpy())
    explainer = create_explainer("gradcam", model, cam_layers(model, tuple(x.shape[1:]))[-1])
    expected = explainer.attribute(x, target=target).detach().numpy()
    stored = np.stack([decode_map(m, s) for m, s in zip(frame["map"], frame["map_shape"])])
    np.testing.assert_allclose(stored, expected, atol=2e-3 * np.abs(expected).max(), rtol=2e-3)
