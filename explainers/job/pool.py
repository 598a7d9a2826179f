"""Feeding the explain actors: Ray Data's own actor pool over the job's read tasks.

Measured on the GPU machine (BENCHMARKS.md, runs 5-8): with the job's row-group read tasks,
``map_batches(MapWorker, ...)`` hands the actors their first batch 0.8 s after they are ready.
Actors created up front and fed through ``Dataset.streaming_split`` waited 3-15 s longer (its
start barrier plus the split coordinator), so that variant was dropped.
"""

from __future__ import annotations

import warnings


def run_actor_pool(
    dataset,
    worker_kwargs: dict,
    actors: int,
    gpus_per_actor: float,
    batch_size: int,
    worker: type | None = None,
):
    """Stream ``dataset`` through ``actors`` actors of ``worker`` (default: MapWorker); yields
    their batch summaries."""
    import ray

    if worker is None:
        from .worker import MapWorker as worker

    kwargs = dict(
        fn_constructor_kwargs=worker_kwargs,
        batch_size=batch_size,
        batch_format="pyarrow",
        num_gpus=gpus_per_actor,
        compute=ray.data.ActorPoolStrategy(size=actors),
    )
    try:
        with warnings.catch_warnings():
            # Ray Data hands every actor its transform as an object-store reference, and with
            # its default max_restarts=-1 Ray core logs an error-level line per actor (Ray
            # issues 53727, 57733). The job needs no restarts (a failed run keeps its finished
            # parts; a rerun computes the rest). max_restarts has no named parameter yet; the
            # extra-keyword route it takes is deprecated since Ray 2.5x: that notice is hidden.
            warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")
            stream = dataset.map_batches(worker, max_restarts=0, **kwargs)
    except TypeError:  # a Ray that dropped extra keywords: its default restarts, its log line
        stream = dataset.map_batches(worker, **kwargs)
    yield from stream.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=4)
