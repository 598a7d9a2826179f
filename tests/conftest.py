"""Shared fixtures: paths to the real datasets and one local Ray instance per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATASETS = Path(
    os.environ.get(
        "CYTOTUNE_SHARED_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"
    )
)


def shared_dataset(name: str) -> Path:
    """Path of a real dataset in ../shared/datasets, or skip the test with the reason."""
    path = SHARED_DATASETS / name / "index.csv"
    if not path.is_file():
        pytest.skip(f"real dataset {name} not found at {path} (set CYTOTUNE_SHARED_DATASETS)")
    return path


@pytest.fixture(scope="session")
def ray_local():
    """A small local Ray instance shared by all tests that need one."""
    import ray
    from cytotune.engine.cluster import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()
