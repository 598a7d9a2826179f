"""The maps of one GPU in a process of their own, started with the command.

On one GPU the map workers ran as threads of the job's own process: their start (importing
timm, which pulls in torchvision and torch._dynamo, then building the fold models) came after
the command's imports and plan, under the interpreter lock those and the other stages' threads
held. On one H200 the MitoCheck job's maps started 3.7 s after the process, and their models
were ready 6.7 s later. Here a child started before the command's imports (``warm_early``)
imports the workers' modules and starts CUDA meanwhile; the job hands it the plan's cells and
fold models and reads back each batch's summary as it is written (the map parts themselves go
to the staging directories, as every worker's do).

``CYTOTUNE_MAPS_PROCESS=1`` or ``0`` decides; by default the maps go to the child where the local
executor runs one process on a GPU and the side stages get processes of their own (a GPU with
at least 20 GiB, POSIX).
"""

from __future__ import annotations

import os

MAPS_PROCESS_ENV = "CYTOTUNE_MAPS_PROCESS"
# what the maps' child is called, and imports (and starts: CUDA) before its work comes
MAPS_PROCESS = "cytotune-explain-maps"
MAPS_IMPORTS = ("torch", "timm", "cytotune.explainers.job.worker", "cytotune.explainers.job.maps")


def _asked() -> bool | None:
    from .executor import switch

    if os.environ.get(MAPS_PROCESS_ENV, "").strip() == "":
        return None
    return switch(MAPS_PROCESS_ENV, default=False)


def maps_in_process(config) -> bool:
    """Whether this job's maps run in the maps' child: the local executor with one process
    (:func:`~.processes.process_devices`), and ``CYTOTUNE_MAPS_PROCESS=1``, or by default on a
    GPU where the side stages get processes (:func:`~.processes.side_stages_in_processes`)."""
    from .executor import resolve_executor
    from .processes import process_devices, side_stages_in_processes

    if "maps" not in config.stages or resolve_executor(config) != "local":
        return False
    asked = _asked()
    groups = process_devices()
    if asked is False or len(groups) != 1:
        return False
    if asked:
        return True
    return any(d != "cpu" for d in groups[0]) and side_stages_in_processes(groups[0])


def maps_process_guess(config) -> bool:
    """:func:`maps_in_process` guessed before any import of torch (``warm_early``): asked for,
    or one GPU device shown (``/dev/nvidiaN``, ``CUDA_VISIBLE_DEVICES``) and no
    ``CYTOTUNE_LOCAL_PROCESSES`` above 1. The job confirms it and ends a child it does not
    use."""
    from .executor import resolve_executor
    from .processes import PROCESSES_ENV, STAGE_PROCESSES_ENV, visible_gpus

    if "maps" not in config.stages or resolve_executor(config) != "local":
        return False
    asked = _asked()
    if asked is not None:
        return asked
    if os.environ.get(PROCESSES_ENV, "").strip() not in ("", "1"):
        return False
    if os.environ.get(STAGE_PROCESSES_ENV, "").strip() == "0":
        return False
    return os.name == "posix" and visible_gpus() == 1


def explain_in_child(
    paths: list[str],
    columns: list[str],
    attach,
    cells: int,
    by_fold: bool,
    devices: list[str],
    worker_kwargs: dict,
) -> int:
    """In the maps' child: the cells of ``paths`` (row groups, ``columns``, each with its fold
    by ``attach``) explained by the worker threads on ``devices`` in batches of ``cells``
    (regrouped by fold with ``by_fold``); each batch's summary table is emitted to the job as
    it is written. Returns the batches."""
    from .executor import prefetch
    from .maps import fold_batches, read_cells, thread_batches
    from .processes import emit

    tables = read_cells(paths, columns, attach, cells)
    if by_fold:
        tables = fold_batches(tables, cells)
    count = 0
    for summary in thread_batches(prefetch(tables), devices, worker_kwargs):
        emit(summary)
        count += 1
    return count
