"""One field's work (read, find, cut, draw its montage), run over the fields in order.

``crop_fields`` writes; this module computes. :func:`field_results` yields one
:class:`FieldResult` per field in the listing's order, computed in this process or in a pool of
worker processes (``workers > 1``) that keeps a few fields ahead of the writer. Both paths call
:func:`process_field`, so a dataset does not depend on the number of workers.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from ..pools import worker_pool
from .cells import grow_cells
from .extract import CellCut, cut_cells
from .fields import FieldRecord, read_field, resolve_channel
from .finders import Finder
from .montage import montage_png

AHEAD = 2  # fields queued per worker: enough to keep it busy, few crops held in memory


@dataclass
class FieldResult:
    """What one field gave: an error, or its channel count, dtype, cuts and montage.

    ``cuts`` is None for a readable field whose channels do not match the options (the writer
    quarantines it, or names the mismatch when it is the first field).
    """

    error: str | None = None
    channels: int = 0
    dtype: str = ""
    cuts: list[CellCut] | None = None
    montage: bytes | None = None  # PNG, for the first ``options.montages`` fields
    seconds: float = 0.0  # finding and cutting


def default_workers() -> int:
    """Worker processes when none are asked for: the CPU count, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


def process_field(index: int, record: FieldRecord, options, finder: Finder) -> FieldResult:
    """Read one field, find its cells on the options' channel and cut them.

    With ``options.cell_channel``, the nuclei found are grown into cell bodies on that channel
    (:func:`~cytotune.engine.crop.cells.grow_cells`) and the bodies are cut.

    Args:
        index: position of the field in the listing (the first ``options.montages`` get one).
        record: the field.
        options: the :class:`~cytotune.engine.crop.pipeline.CropOptions`.
        finder: the finder.
    """
    try:
        image = read_field(record.path, options.channel_axis)  # (C, H, W)
    except (ValueError, OSError) as exc:
        return FieldResult(error=f"field unreadable: {exc}")
    c = image.shape[0]
    result = FieldResult(channels=c, dtype=str(image.dtype))
    names = options.channel_names or tuple(f"ch{i}" for i in range(c))
    if len(names) != c:
        return result
    cell_channel = options.cell_channel
    try:
        channel = resolve_channel(options.channel, tuple(names))
        if cell_channel is not None:
            cell_channel = resolve_channel(cell_channel, tuple(names))
    except ValueError:
        return result
    start = time.perf_counter()
    labels = finder.find(image[channel])
    bodies = None
    if cell_channel is not None:
        bodies = grow_cells(image[cell_channel], labels)
    result.cuts = cut_cells(
        image, labels, options.size,
        min_area=options.min_area, max_area=options.max_area, clean=options.clean,
        bodies=bodies,
    )  # fmt: skip
    result.seconds = time.perf_counter() - start
    if index < options.montages:
        label = record.label or options.default_label
        shown, outlined = (channel, labels) if bodies is None else (cell_channel, bodies)
        result.montage = montage_png(
            image[shown], outlined, result.cuts, options.size,
            title=f"{record.field_id} [{label}]",
        )  # fmt: skip
    return result


_WORKER: tuple = ()  # (options, finder) in a worker process


def _start_worker(options, finder: Finder) -> None:
    global _WORKER
    _WORKER = (options, finder)


def _work(index: int, record: FieldRecord) -> FieldResult:
    return process_field(index, record, *_WORKER)


@contextlib.contextmanager
def field_results(
    records: list[FieldRecord], options, finder: Finder, workers: int
) -> Iterator[Iterator[FieldResult]]:
    """Context yielding an iterator of the fields' results, in ``records`` order.

    Args:
        records: the fields.
        options: the crop options.
        finder: the finder; one whose ``processes`` is False always runs in this process.
        workers: processes; 1 (or a single field) computes here, one field at a time.
    """
    workers = min(workers, len(records))
    if workers <= 1 or not finder.processes:
        yield (process_field(i, r, options, finder) for i, r in enumerate(records))
        return
    pool = worker_pool(workers, initializer=_start_worker, initargs=(options, finder))
    jobs = iter(enumerate(records))
    queued: deque = deque()

    def submit(n: int) -> None:
        for index, record in itertools.islice(jobs, n):
            queued.append(pool.submit(_work, index, record))

    def ordered() -> Iterator[FieldResult]:
        while queued:
            result = queued.popleft().result()
            submit(1)
            yield result

    try:
        # Every worker starts (forks) here, before the caller starts threads (progress bar).
        submit(AHEAD * workers)
        yield ordered()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
