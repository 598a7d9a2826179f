"""Feeding the explain actors: Ray Data's own actor pool over the job's read tasks.

Measured on the GPU machine (BENCHMARKS.md, runs 5-8): with the job's row-group read tasks,
``map_batches(MapWorker, ...)`` hands the actors their first batch 0.8 s after they are ready.
Actors created up front and fed through ``Dataset.streaming_split`` waited 3-15 s longer (its
start barrier plus the split coordinator), so that variant was dropped.
"""

from __future__ import annotations


def run_actor_pool(
    dataset, worker_kwargs: dict, actors: int, gpus_per_actor: float, batch_size: int
):
    """Stream ``dataset`` through ``actors`` MapWorker actors; yields their batch summaries."""
    import ray

    from .worker import MapWorker

    stream = dataset.map_batches(
        MapWorker,
        fn_constructor_kwargs=worker_kwargs,
        batch_size=batch_size,
        batch_format="pyarrow",
        num_gpus=gpus_per_actor,
        compute=ray.data.ActorPoolStrategy(size=actors),
    )
    yield from stream.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=4)
