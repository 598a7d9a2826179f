"""Worker process pools that never fork a process that has loaded Ray.

A plain ``ProcessPoolExecutor`` forks on Linux. A process that has used Ray holds threads and
native (gRPC) state that a forked child inherits half-copied: a Ray client's destructor, run by
the child's garbage collector, crashed ingest's workers with SIGSEGV after an earlier
``ray.init`` in the same process. There the workers start from a clean ``forkserver`` process
(``spawn`` where it is missing), which imports only what the work needs: what the caller
registered at run time must reach them through ``initializer`` (ingest passes its readers),
and a calling script needs an ``if __name__ == "__main__":`` guard. Elsewhere they are forked
as before (they inherit everything, and a script needs no guard).
"""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def pool_context() -> multiprocessing.context.BaseContext:
    """The start method for worker pools: ``fork`` where the platform has it and this process
    has not loaded Ray; else ``forkserver`` (``spawn`` where that is missing)."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and "ray" not in sys.modules:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def worker_pool(workers: int, **kwargs: Any) -> ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``workers`` processes started by :func:`pool_context`;
    ``kwargs`` go to the executor (``initializer``, ``initargs``)."""
    return ProcessPoolExecutor(workers, mp_context=pool_context(), **kwargs)
