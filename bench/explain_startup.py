"""Where the explain job's start-up goes: time until Ray Data's GPU actors exist and first answer.

Same dataset and pipeline shape as ``cytotune explain`` (read Parquet -> attach folds -> actor
pool), with actors that only count rows, so the numbers are Ray Data + Ray start-up alone:

    python bench/explain_startup.py --out bench/results/explain/startup.json

Without a GPU it also times the read pipeline feeding the worker in the driver (the job's path
for one CPU actor on a local Ray: no actor process to start).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine, random_dataset, write_result


class Counter:
    """A no-op actor: reports when it was created, counts rows."""

    def __init__(self, heavy: bool) -> None:
        self.created = time.time()
        if heavy:  # what the real worker imports
            import cytotune.explainers.job.worker  # noqa: F401

        self.ready = time.time()

    def __call__(self, table):
        import pyarrow as pa

        return pa.table(
            {"rows": [table.num_rows], "created": [self.created], "ready": [self.ready]}
        )


def in_driver(paths, cells, heavy: bool):
    """The same read pipeline with the counter run here (explainers.job.pool.run_in_driver,
    what the job does for one CPU actor on a local Ray)."""
    import ray
    from cytotune.explainers.job.maps import AttachFold
    from cytotune.explainers.job.pool import run_in_driver

    ds = ray.data.read_parquet(paths).select_columns(["cell_id", "image", "label"])
    ds = ds.map_batches(
        AttachFold(cells, np.zeros(len(cells), np.int32)), batch_format="pyarrow", batch_size=None
    )
    start = time.time()
    counter = Counter(heavy)
    first, rows = None, 0
    for batch in run_in_driver(ds, counter, 256):
        first = first or time.time() - start
        rows += sum(batch.column("rows").to_pylist())
    return {
        "total_s": time.time() - start,
        "first_batch_s": first,
        "actors_created_s": counter.created - start,
        "actors_ready_s": counter.ready - start,
        "rows": rows,
    }


def pipeline(paths, cells, attach: bool, heavy: bool, actors: int, gpus: float, cpus: float | None):
    import ray
    from cytotune.explainers.job.maps import AttachFold

    ds = ray.data.read_parquet(paths).select_columns(["cell_id", "image", "label"])
    if attach:
        ds = ds.map_batches(
            AttachFold(cells, np.zeros(len(cells), np.int32)),
            batch_format="pyarrow",
            batch_size=None,
        )
    kwargs = {"num_gpus": gpus} | ({"num_cpus": cpus} if cpus is not None else {})
    ds = ds.map_batches(
        Counter,
        fn_constructor_kwargs={"heavy": heavy},
        batch_size=256,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        **kwargs,
    )
    start = time.time()
    first, rows, created, ready = None, 0, [], []
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        first = first or time.time() - start
        rows += sum(batch.column("rows").to_pylist())
        created += batch.column("created").to_pylist()
        ready += batch.column("ready").to_pylist()
    return {
        "total_s": time.time() - start,
        "first_batch_s": first,
        "actors_created_s": max(created) - start,
        "actors_ready_s": max(ready) - start,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, default=16384)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import ray
    from cytotune.engine.cluster import ensure_ray
    from cytotune.engine.data import CellDataset

    root = Path(tempfile.mkdtemp())
    dataset = CellDataset(random_dataset(root / "data", args.cells, args.size))
    cells = dataset.metadata()["cell_id"].to_numpy()
    start = time.time()
    ensure_ray()
    result = {"bench": "explain_startup", "machine": machine(), "ray_init_s": time.time() - start}
    gpu = 0.25 if ray.cluster_resources().get("GPU") else 0
    cases = {
        "noop": dict(attach=False, heavy=False, cpus=None),
        "noop_attach": dict(attach=True, heavy=False, cpus=None),
        "imports_attach": dict(attach=True, heavy=True, cpus=None),
        "imports_attach_cpu0": dict(attach=True, heavy=True, cpus=0),
    }
    for name, case in cases.items():
        actors = 4 if gpu else 1
        out = pipeline(
            dataset.shard_paths, cells, case["attach"], case["heavy"], actors, gpu, case["cpus"]
        )
        result |= {f"{name}_{k}": v for k, v in out.items()}
    if not gpu:  # one CPU actor: the job runs its worker in the driver instead
        out = in_driver(dataset.shard_paths, cells, heavy=True)
        result |= {f"imports_attach_in_driver_{k}": v for k, v in out.items()}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
