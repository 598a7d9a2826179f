"""Where the explain job computes: in this process (``local``) or on Ray actors (``ray``).

On one GPU (or on a CPU-only laptop) Ray buys the job nothing but its start-up: a local Ray
(7.6 s on the GPU machine), Ray Data planning the read (7 s), map actors importing torch and
loading the fold models (10 s), then quality actors doing it again (18 s before their first
result): most of the 114 s the MitoCheck job took on one H100 (BENCHMARKS.md, "The MitoCheck
explain job on one GPU"). ``auto`` therefore runs the job in this process unless there is
more than one GPU or node to spread it over, or the user named a cluster or several actors.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator

EXECUTORS = ("auto", "local", "ray")


def resolve_executor(config) -> str:
    """``local`` or ``ray`` for an :class:`ExplainConfig` (``executor`` ``auto``: see module)."""
    if config.executor != "auto":
        return config.executor
    if config.address or os.environ.get("RAY_ADDRESS"):
        return "ray"  # a cluster was named: its nodes share the work
    if config.actors is not None and config.actors > 1:
        return "ray"  # several actors were asked for
    if _ray_nodes() > 1:
        return "ray"  # this process already runs on a multi-node Ray
    import torch

    return "ray" if torch.cuda.device_count() > 1 else "local"


def _ray_nodes() -> int:
    """Alive nodes of the Ray this process already joined (0: none joined; Ray not started)."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return 0
    return sum(1 for node in ray.nodes() if node.get("Alive"))


_END = object()


def prefetch(items: Iterable, depth: int = 4) -> Iterator:
    """``items`` produced by a background thread up to ``depth`` ahead (reading and decoding
    Parquet release the GIL, so the next batch is read while this one is explained). An
    exception in the producer is raised here; closing the iterator stops the producer."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(exc)

    thread = threading.Thread(target=produce, name="explain-read", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
