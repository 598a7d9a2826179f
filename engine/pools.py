"""Worker process pools that never fork a process holding threads.

A plain ``ProcessPoolExecutor`` forks on Linux. A process that has used Ray (or gRPC, or CUDA)
holds threads and native state that a forked child inherits half-copied: a Ray client's
destructor run by the child's garbage collector crashed ingest's workers with SIGSEGV after an
earlier ``ray.init`` in the same process. Workers here start from a clean ``forkserver`` process
(``spawn`` where it is missing), which imports only what the work needs.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def clean_context() -> multiprocessing.context.BaseContext:
    """The start method for worker pools: ``forkserver`` where the platform has it, else
    ``spawn``; never ``fork``."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def worker_pool(workers: int, **kwargs: Any) -> ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``workers`` processes started by :func:`clean_context`;
    ``kwargs`` go to the executor (``initializer``, ``initargs``). Work and arguments must be
    picklable, since nothing is inherited."""
    return ProcessPoolExecutor(workers, mp_context=clean_context(), **kwargs)
