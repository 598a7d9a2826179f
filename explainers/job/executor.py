"""Where the explain job computes: in this process (``local``) or on Ray actors (``ray``).

On one GPU (or on a CPU-only laptop) Ray buys the job nothing but its start-up: a local Ray
(7.6 s on the GPU machine), Ray Data planning the read (7 s), map actors importing torch and
loading the fold models (10 s), then quality actors doing it again (18 s before their first
result): most of the 114 s the MitoCheck job took on one H100 (BENCHMARKS.md, "The MitoCheck
explain job on one GPU"). ``auto`` therefore runs the job in this process unless there is
more than one node to spread it over, or the user named a cluster or several actors. Several
GPUs of this machine are shared by the local executor's threads (:func:`local_devices`): one
process, no actor start-up, every GPU busy.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator

EXECUTORS = ("auto", "local", "ray")


def switch(name: str, default: bool) -> bool:
    """A 0/1 environment switch of the job (``CYTOTUNE_FOLD_BATCHES`` and the like): unset or
    empty gives ``default``; anything but 0 or 1 is an error that names the switch."""
    value = os.environ.get(name, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"{name}={value!r}: give 1 (on) or 0 (off), or leave it unset")
    return default if value == "" else value == "1"


def whole_number(name: str, default: int, what: str) -> int:
    """A count the job reads from the environment (``CYTOTUNE_QUALITY_PROCESSES`` and the
    like): unset or empty gives ``default``; anything but a whole number is an error that names
    the variable and ``what`` it counts; at least 1."""
    value = os.environ.get(name, "").strip()
    if value and not value.isdigit():
        raise ValueError(f"{name}={value!r}: give a whole number {what}")
    return max(1, int(value)) if value else default


def resolve_executor(config) -> str:
    """``local`` or ``ray`` for an :class:`ExplainConfig` (``executor`` ``auto``: see module)."""
    if config.executor != "auto":
        return config.executor
    if config.address or os.environ.get("RAY_ADDRESS"):
        return "ray"  # a cluster was named: its nodes share the work
    if config.actors is not None and config.actors > 1:
        return "ray"  # several actors were asked for
    if ray_nodes() > 1:
        return "ray"  # this process already runs on a multi-node Ray
    return "local"  # this machine: its GPUs, if several, are shared by threads


def ray_nodes() -> int:
    """Alive nodes of the Ray this process already joined (0: none joined; Ray not started)."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return 0
    return alive_nodes()


def alive_nodes() -> int:
    """Alive nodes of the Ray this process joined."""
    import ray

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


def local_workers() -> int:
    """Workers of the local executor on this machine: threads, each with its own copy of the
    fold models and, on a GPU, its own CUDA stream. Small crops make a batch cost its kernel
    launches more than its arithmetic, and four Ray actors sharing one H100 did the MitoCheck
    maps four times as fast as one; threads share that gain where torch releases the GIL.
    ``CYTOTUNE_LOCAL_WORKERS`` overrides (default: 4 with a GPU, 1 on the CPU, whose cores
    torch already uses)."""
    value = os.environ.get("CYTOTUNE_LOCAL_WORKERS")
    if value:
        return max(1, int(value))
    import torch

    return 4 if torch.cuda.is_available() else 1


def local_devices() -> list[str]:
    """The devices of the local executor: every visible GPU (``CUDA_VISIBLE_DEVICES`` picks
    them), else the CPU."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(count)] or ["cpu"]


def worker_devices(devices: list[str] | None = None) -> list[str]:
    """One device per local worker: :func:`local_workers` per device of ``devices`` (default:
    :func:`local_devices`), interleaved (the first workers to get work are on different GPUs)."""
    devices = devices if devices is not None else local_devices()
    return [device for _ in range(local_workers()) for device in devices]


def in_threads(items: Iterable, workers: list, fn, ahead: int = 2) -> Iterator:
    """``fn(worker, item)`` for each item, on one thread per worker (each worker used by one
    thread at a time, on its own CUDA stream on the worker's ``device`` when that is a GPU);
    results in item order, at most ``ahead`` items per worker in flight."""
    import collections
    from concurrent.futures import ThreadPoolExecutor

    idle: queue.SimpleQueue = queue.SimpleQueue()
    for worker in workers:
        idle.put((worker, _new_stream(getattr(worker, "device", None))))

    def run(item):
        worker, stream = idle.get()
        try:
            with _on_stream(stream):
                return fn(worker, item)
        finally:
            idle.put((worker, stream))

    with ThreadPoolExecutor(len(workers), thread_name_prefix="explain-worker") as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.submit(run, item))
            if len(pending) > ahead * len(workers):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


_RETRIES = [0]
_RETRIES_LOCK = threading.Lock()


def memory_retries() -> int:
    """Calls :func:`with_less_memory` made again in this process so far (the map workers' and
    the quality processes' records in ``explain/workers/`` carry it)."""
    return _RETRIES[0]


def with_less_memory(fn, attempts: int = 6):
    """``fn()``; after a CUDA out-of-memory error, again with the device's cache emptied and
    half the input values a call may hold (:func:`call_limit`), up to ``attempts`` times, the
    last error raised. The job's processes share one GPU: a call that met another's peak is
    tried again smaller, not dropped (on one H100 the MitoCheck job lost a trial's Integrated
    Gradients and SmoothGrad maps to such errors). A SmoothGrad call made again draws its noise
    in smaller chunks: on a GPU, other draws of the same noise than a first call would take."""
    import time

    import torch

    from ..methods.smoothgrad import CALL_VALUES_GPU, call_limit, current_call_limit

    limit = None
    failed = 0
    while True:
        try:
            with call_limit(limit):
                return fn()
        except torch.OutOfMemoryError:
            failed += 1
            if failed > attempts:
                raise
        with _RETRIES_LOCK:
            _RETRIES[0] += 1
        # out of the except clause: the failed call's frames (and tensors) are let go
        torch.cuda.empty_cache()
        time.sleep(0.05 * failed)  # the other processes' calls move on meanwhile
        limit = (limit or current_call_limit() or CALL_VALUES_GPU) // 2


def _new_stream(device=None):
    """A CUDA stream on ``device`` (None: the current GPU), or None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    if device is None:
        return torch.cuda.Stream()
    device = torch.device(device)
    return torch.cuda.Stream(device=device) if device.type == "cuda" else None


def _on_stream(stream):
    """Work queued on ``stream`` (None: nothing changes), synchronised before it is left, so
    the next user of the worker sees its results."""
    import contextlib

    import torch

    if stream is None:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def scope():
        with torch.cuda.device(stream.device), torch.cuda.stream(stream):
            yield
        stream.synchronize()

    return scope()
