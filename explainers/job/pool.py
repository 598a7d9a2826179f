"""Two ways to feed the explain actors from Ray Data (``FEEDS``; BENCHMARKS.md, runs 5-8).

``map_batches``, the default: Ray Data's own actor pool (``map_batches(MapWorker, ...)``). With
the job's fast read tasks the actors start work as soon as they are ready (measured: first
batch 0.8 s after the actors were ready).
``split``: actors created before the stream, each pulling its share through
``Dataset.streaming_split``. Its start barrier (every consumer must ask first) plus the
coordinator cost 3-15 s more before the first batch; kept for comparison
(``CYTOTUNE_EXPLAIN_FEED=split``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa


class ExplainActor:
    """One explainer process: a ``MapWorker`` and a loop over its share of the stream."""

    def __init__(self, worker_kwargs: dict) -> None:
        from .worker import MapWorker

        self.worker = MapWorker(**worker_kwargs)

    def ready(self) -> bool:
        return True

    def consume(self, iterator, batch_size: int) -> Iterator[pa.Table]:
        """Summaries (trial_id, method, rows, error) of each batch, as they are written."""
        for batch in iterator.iter_batches(
            batch_size=batch_size, batch_format="pyarrow", prefetch_batches=2
        ):
            yield self.worker(batch)


def run_pool(dataset, worker_kwargs: dict, actors: int, gpus_per_actor: float, batch_size: int):
    """Stream ``dataset`` through ``actors`` explain actors; yields their batch summaries."""
    import ray

    remote = ray.remote(ExplainActor)
    pool = [
        remote.options(num_gpus=gpus_per_actor, num_cpus=1).remote(worker_kwargs)
        for _ in range(actors)
    ]
    shares = dataset.streaming_split(actors, equal=False)
    streams = [
        actor.consume.options(num_returns="streaming").remote(share, batch_size)
        for actor, share in zip(pool, shares)
    ]
    active = list(streams)
    try:
        while active:
            ready, _ = ray.wait(active, num_returns=1)
            for stream in ready:
                try:
                    ref = next(stream)
                except StopIteration:
                    active.remove(stream)
                    continue
                yield ray.get(ref)
    finally:
        for actor in pool:
            ray.kill(actor)


def run_map_batches(
    dataset, worker_kwargs: dict, actors: int, gpus_per_actor: float, batch_size: int
):
    """The same through Ray Data's own actor pool (``map_batches(MapWorker, ...)``): no start
    barrier, but the actors are created when the stream starts rather than before it."""
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


FEEDS = {"split": run_pool, "map_batches": run_map_batches}
