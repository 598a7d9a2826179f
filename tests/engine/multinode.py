"""Helpers of the multi-node tests (issue 15): a real Ray cluster of several nodes on this
machine, a small dataset and study, Tune's own trial records, the explain actors, and a map
computed directly in this process to compare the stored maps with."""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import yaml
from cytotune.engine.search import StudyConfig

from .test_search import TINY_SPACE

# the search tests' tiny space, small_cnn only (every trial builds the same kind of model)
SPACE = {**TINY_SPACE, "families": {"small_cnn": TINY_SPACE["families"]["small_cnn"]}}


@contextlib.contextmanager
def start_cluster(head_cpus: int = 2, workers: dict[str, int] | None = None) -> Iterator[tuple]:
    """A ``ray.cluster_utils.Cluster``: the head (which this process, the driver, joins) and one
    worker node per ``workers`` entry (name -> CPUs; each also gets a custom resource of its
    name). Yields ``(cluster, head, [worker nodes])``; the session's one-node Ray
    (tests/conftest.py) is stopped meanwhile and started again afterwards."""
    import ray
    from cytotune.engine.cluster import ensure_ray
    from ray.cluster_utils import Cluster

    was_local = ray.is_initialized()
    ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": head_cpus,
            "resources": {"node_head": 1},
            "include_dashboard": False,
        },
    )
    # Cluster notes its address in /tmp/ray/ray_current_cluster, where any ray.init() without
    # an address on this machine would find it and join: only this test may use it
    ray._common.utils.reset_ray_address()
    nodes = [
        cluster.add_node(num_cpus=cpus, resources={name: 1})
        for name, cpus in (workers or {"node_b": 2}).items()
    ]
    cluster.wait_for_nodes()
    ensure_ray(cluster.address, log=None)
    try:
        yield cluster, cluster.head_node, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()
        if was_local:
            ensure_ray(num_cpus=2, log=None)


def write_workspace(root: Path) -> Path:
    """A 128-cell synthetic dataset (shards of 32 rows: Ray Data gets several read tasks, so
    every explain actor gets work), its 2 frozen folds and the tiny search space, in ``root``."""
    from cytotune.engine.data import DatasetWriter
    from cytotune.engine.data.folds import make_folds, save_folds
    from cytotune.engine.synth import write_dataset

    with mock.patch(
        "cytotune.engine.synth.generate.DatasetWriter",
        functools.partial(DatasetWriter, rows_per_shard=32),
    ):
        write_dataset("metastasis", root / "dataset", n=128, size=24, seed=0, progress=False)
    # the folds up front, so the search itself has nothing to write into the dataset
    save_folds(root / "dataset", make_folds(root / "dataset", k=2, group="well", name="k2-well"))
    (root / "tiny.yaml").write_text(yaml.safe_dump(SPACE))
    return root


def study_file(root: Path, name: str, trials: int = 2, epochs: int = 4) -> Path:
    """A study of ``trials`` random configurations of ``epochs`` epochs, 2 CPUs each (one trial
    per 2-CPU node), no early stopping, on the workspace's dataset."""
    data = {
        "name": name,
        "dataset": "dataset",
        "folds": {"k": 2, "group": "well"},
        "space": "tiny.yaml",
        "budget": {"trials": trials, "max_epochs": epochs, "grace_epochs": 1, "race": "epochs"},
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
    return path


def study_config(root: Path, name: str, **kwargs) -> StudyConfig:
    return StudyConfig.from_yaml(study_file(root, name, **kwargs))


def reference_scores(study: StudyConfig, params: dict) -> dict:
    """The configuration trained in this process, without Ray, on the 2 threads Ray gives a
    2-CPU trial; its last report."""
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


def file_tree(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (outside ``skip``) with its modification time and size."""
    out = {}
    for path in root.rglob("*"):
        if skip is not None and path.is_relative_to(skip):
            continue
        if path.is_file():
            stat = path.stat()
            out[str(path)] = (stat.st_mtime_ns, stat.st_size)
    return out


def tune_results(trial_dir: Path) -> list[dict]:
    """Tune's own record of a trial's reported results (result.json, one line each)."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def alive_actors(class_name: str, node_id: str | None = None) -> list[dict]:
    """Ray's actor table rows of live actors of ``class_name`` (a substring), on ``node_id``."""
    import ray._private.state

    return [
        a
        for a in ray._private.state.actors().values()
        if a["State"] == "ALIVE"
        and class_name in a["ActorClassName"]
        and (node_id is None or a["Address"]["NodeID"] == node_id)
    ]


def checkpointed_trial_on(node_id: str, tune_dir: Path, epochs: int) -> str | None:
    """A running trial whose Tune actor lives on ``node_id`` and that has a checkpoint."""
    pids = {a["Pid"] for a in alive_actors("", node_id)}
    for trial_dir in tune_dir.glob("trial_*"):
        results = tune_results(trial_dir)
        if results and results[-1]["epoch"] < epochs and results[-1]["pid"] in pids:
            if any(trial_dir.glob("checkpoint_*")):
                return trial_dir.name[len("trial_") :]
    return None


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll ``condition()`` until it returns something truthy (returned) or ``timeout`` passes
    (AssertionError naming ``what``)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(interval)
    raise AssertionError(f"not seen within {timeout:g} s: {what}")


def check_maps_against_direct(plan, frame, trial, fold: int) -> None:
    """The stored Grad-CAM maps and predictions of ``frame``'s cells (all of ``fold``) equal
    those computed here from the fold's checkpoint with the explainer itself."""
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
    size = expected.shape[-2:]  # a CAM is stored at its layer's size, read at the crop's
    stored = np.stack([decode_map(m, s, size) for m, s in zip(frame["map"], frame["map_shape"])])
    np.testing.assert_allclose(stored, expected, atol=2e-3 * np.abs(expected).max(), rtol=2e-3)
