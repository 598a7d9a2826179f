"""cluster.yaml passes the checks ``ray up`` runs before it contacts a cloud (issue 15, item 4).

``ray up`` fills in the launcher's defaults (``prepare_config``) and then validates the result
against Ray's cluster schema (``validate_config``, ``ray/autoscaler/ray-schema.json``) before
it creates the provider; both steps need no cloud account, so they run here on the file as
shipped. Broken copies show that the validation can fail.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _validated(config: dict) -> dict:
    """What ``ray up`` does to the file before the cloud provider is touched."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_own_validation(config):
    prepared = _validated(config)
    assert prepared["head_node_type"] == "head"
    assert set(prepared["available_node_types"]) == {"head", "gpu_worker"}
    assert prepared["available_node_types"]["head"]["max_workers"] == 0  # filled in by Ray


@pytest.mark.parametrize(
    "change, error",
    [
        (lambda c: c.__setitem__("max_wrkers", 3), "max_wrkers"),
        (lambda c: c.__setitem__("head_node_type", "gpu_head"), "head_node_type"),
        (
            lambda c: c["available_node_types"]["gpu_worker"].__setitem__("min_workers", "two"),
            "'two' is not of type 'integer'",
        ),
        (
            lambda c: c["available_node_types"]["gpu_worker"].pop("resources"),
            "'resources' is a required property",
        ),
    ],
)
def test_a_broken_copy_is_refused(config, change, error):
    broken = copy.deepcopy(config)
    change(broken)
    with pytest.raises(Exception, match=re.escape(error)):
        _validated(broken)


def test_workers_join_the_head_and_run_the_same_cytotune(config):
    """What the schema cannot know: the workers join the head's port, the head takes no GPU
    trials, and every node installs the project that file_mounts copies to it."""
    head = " ".join(config["head_start_ray_commands"])
    port = re.search(r"ray start --head --port=(\d+)", head).group(1)
    assert "--num-gpus=0" in head
    workers = " ".join(config["worker_start_ray_commands"])
    assert f"--address=$RAY_HEAD_IP:{port}" in workers
    (target,) = [t for t, source in config["file_mounts"].items() if source == "."]
    assert any(f"pip install -q -e ~/{Path(target).name}" in c for c in config["setup_commands"])
    text = CLUSTER_YAML.read_text()
    assert "storage" in text
    assert "every node" in text  # where the study must live
