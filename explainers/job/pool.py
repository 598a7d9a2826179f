"""Feeding the explain actors: Ray Data's own actor pool over the job's read tasks.

Measured on the GPU machine (BENCHMARKS.md, runs 5-8): with the job's row-group read tasks,
``map_batches(MapWorker, ...)`` hands the actors their first batch 0.8 s after they are ready.
Actors created up front and fed through ``Dataset.streaming_split`` waited 3-15 s longer (its
start barrier plus the split coordinator), so that variant was dropped.

On a cluster the actors survive the loss of a node: Ray restarts an actor whose node died on
another node and Ray Data runs its unfinished batches again there (the map parts are named by
batch, so a batch run twice is stored once: parts.py). On a local one-node Ray there is nothing
to move to, and the pool asks for no restarts (see :func:`restart_options`).
"""

from __future__ import annotations

import warnings

from .executor import alive_nodes

# restarts of one actor and reruns of one batch after its actor died (a node lost each time);
# bounded, so an actor that crashes its process on every start fails the job instead of looping
MAX_RESTARTS = 4


def restart_options(joined_cluster: bool) -> dict:
    """``max_restarts`` / ``max_task_retries`` for the explain actors.

    With restarts, Ray core logs an error-level line per actor whose constructor arguments are
    in the object store (Ray Data passes every actor its transform that way; Ray issues 53727,
    57733), which on a one-node laptop run only alarms. So: restarts when this process joined a
    cluster (``--address``/RAY_ADDRESS: it may gain and lose nodes while the job runs) or Ray
    has more than one node; none on a local one-node Ray, where a lost node is the whole job.
    """

    if joined_cluster or alive_nodes() > 1:
        return {"max_restarts": MAX_RESTARTS, "max_task_retries": MAX_RESTARTS}
    return {"max_restarts": 0}


def in_driver(actors: int, gpus_per_actor: float, joined_cluster: bool) -> bool:
    """One CPU actor on a local one-node Ray: run the worker in this process instead.

    Such an actor is one more process on the same CPUs, and it starts by importing torch, timm
    and the model families and loading every fold model, all of which this process has done or
    does anyway; on a loaded 2-core machine that start-up was most of the maps stage
    (BENCHMARKS.md, "Explain job start-up on the CPU"). Ray Data still reads the crops.
    """

    if actors != 1 or gpus_per_actor or joined_cluster:
        return False
    return alive_nodes() == 1


def run_in_driver(dataset, worker, batch_size: int):
    """``worker`` applied here to ``dataset``'s batches of ``batch_size`` rows."""
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
        yield worker(batch)


def run_actor_pool(
    dataset,
    worker_kwargs: dict,
    actors: int,
    gpus_per_actor: float,
    batch_size: int,
    worker: type | None = None,
    joined_cluster: bool = False,
):
    """Stream ``dataset`` through ``actors`` actors of ``worker`` (default: MapWorker); yields
    their batch summaries (one CPU actor on a local Ray: the worker runs here, :func:`in_driver`).
    ``joined_cluster``: Ray was reached by address (actors restart on another node when theirs
    is lost; :func:`restart_options`)."""
    import ray

    if worker is None:
        from .worker import MapWorker as worker

    if in_driver(actors, gpus_per_actor, joined_cluster):
        yield from run_in_driver(dataset, worker(**worker_kwargs), batch_size)
        return
    kwargs = dict(
        fn_constructor_kwargs=worker_kwargs,
        batch_size=batch_size,
        batch_format="pyarrow",
        num_gpus=gpus_per_actor,
        # at most 2 batches queued per actor, so that every actor gets work (with Ray Data's
        # default of 4 the first actors ready could take all of a small job)
        compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=2),
    )
    try:
        with warnings.catch_warnings():
            # max_restarts and max_task_retries have no named parameters yet; the extra-keyword
            # route they take is deprecated since Ray 2.5x: that notice is hidden
            warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")
            stream = dataset.map_batches(worker, **restart_options(joined_cluster), **kwargs)
    except TypeError:  # a Ray that dropped extra keywords: its default restarts, its log line
        stream = dataset.map_batches(worker, **kwargs)
    yield from stream.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=4)
