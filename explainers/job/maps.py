"""Stage 1: per-cell maps. Ray Data streams the crops through GPU actors holding the fold models,
or (executor ``local``: one GPU, a laptop) this process reads them and runs the same worker.

The actors write their map rows as Parquet parts into a staging directory per (trial, method)
(in parallel: the driver only sees row counts), and the driver renames each staging directory
to the map table when the run is complete, so an interrupted run leaves no half-written map
table and a rerun recomputes only the unfinished parts.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from cytotune.engine.data.row_groups import RowGroupReader, read_row_groups, row_groups
from cytotune.engine.io import publish_directory
from tqdm.auto import tqdm

from .config import ExplainConfig
from .executor import (
    in_threads,
    memory_retries,
    prefetch,
    resolve_executor,
    switch,
    worker_devices,
)
from .layout import MAPS, maps_path, maps_staging_dir, write_maps
from .parts import finish_parts
from .plan import ExplainPlan
from .pool import run_actor_pool
from .state import ExplainState

# .worker (torch, the model families) is imported where it is used: Ray Data's read tasks
# unpickle AttachFold from this module and need none of it


def part_name(trial_id: str, method: str) -> str:
    return f"maps/{trial_id}/{method}"


class AttachFold:
    """Ray Data step: keep the planned cells of a batch and add the fold whose model explains it."""

    def __init__(self, cell_ids: np.ndarray, folds: np.ndarray) -> None:
        self.cell_ids = pa.array([str(c) for c in cell_ids], pa.string())
        self.folds = pa.array(np.asarray(folds, dtype=np.int32))

    def __call__(self, table: pa.Table) -> pa.Table:
        position = pc.index_in(table.column("cell_id"), value_set=self.cell_ids)
        if position.null_count:  # copy only when some rows are not planned
            keep = pc.is_valid(position)
            table, position = table.filter(keep), position.filter(keep)
        folds = pc.take(self.folds, position)
        table = table.append_column("fold", folds)
        # rows of one fold together, so a batch feeds one fold model at full size (copy only
        # when the block is not in fold order already)
        order = pc.sort_indices(folds)
        if (
            len(order)
            and not pc.all(pc.equal(order, pa.array(range(len(order)), order.type))).as_py()
        ):
            table = table.take(order)
        return table


class StagedParts:
    """The run's staging directory per (trial, method), published by ``commit``."""

    def __init__(self, study_dir, parts: Iterable[tuple[str, str]], run_id: str) -> None:
        self.targets = {p: maps_path(study_dir, *p) for p in parts}
        self.staging = {p: maps_staging_dir(study_dir, *p, run_id) for p in parts}

    def commit(self, part: tuple[str, str]) -> int:
        """Publish the part's map table; returns its rows (each cell and output once, however
        often Ray Data ran a batch)."""
        staging, target = self.staging[part], self.targets[part]
        rows = finish_parts(staging) if staging.is_dir() else 0
        if not rows:  # no cell: an empty table
            write_maps(MAPS.schema.empty_table(), staging / "empty.parquet")
        publish_directory(staging, target)  # a reader sees the old table or the new one
        return rows

    def abort(self) -> None:
        for staging in self.staging.values():
            shutil.rmtree(staging, ignore_errors=True)


def pending_parts(
    plan: ExplainPlan, config: ExplainConfig, state: ExplainState
) -> dict[str, list[str]]:
    """Methods still to compute per trial."""
    out: dict[str, list[str]] = {}
    for trial in plan.trials:
        todo = [
            m
            for m in config.method_names
            if config.overwrite
            or not state.done(part_name(trial.trial_id, m), config.method_key(m))
            or not maps_path(plan.study_dir, trial.trial_id, m).exists()
        ]
        if todo:
            out[trial.trial_id] = todo
    return out


def cell_columns(plan: ExplainPlan) -> list[str]:
    """The dataset columns the map worker reads."""
    columns = ["cell_id", "image"]
    manifest = plan.manifest
    columns += ["label"] if manifest.task == "classification" else list(manifest.targets)
    schema = pq.read_schema(plan.dataset.shard_paths[0]).names
    return columns + [c for c in ("mask", "evidence") if c in schema]


def attach_fold(plan: ExplainPlan) -> AttachFold:
    return AttachFold(plan.cells["cell_id"].to_numpy(), plan.cells["fold"].to_numpy())


# batches over which a Ray read task sorts the cells by fold (memory: this many batches of crops)
FOLD_WINDOW = 4


def cell_blocks(plan: ExplainPlan, config: ExplainConfig):
    """The planned cells as a Ray Dataset (row groups as items, each cell with its fold) in
    blocks of one actor batch: with blocks of 1,024 rows, 6,000 cells made 6 blocks that the
    first actors ready took between them while the others (a whole second GPU) sat idle.

    The cells are sorted by fold over windows of :data:`FOLD_WINDOW` batches before they are cut
    into blocks (``CYTOTUNE_FOLD_BATCHES=0``: over one batch), so that the actors' batches
    hold runs of one fold: MitoCheck's batches of 128 held 4.7 folds on average, each a pass of
    every (trial, method), and 2.1 so (:func:`fold_batches` regroups the local executor's
    batches exactly; Ray Data cuts its batches from the stream of blocks itself)."""
    manifest = plan.manifest
    batch = config.cells_per_batch()
    ds = read_row_groups(
        plan.dataset.shard_paths,
        cell_columns(plan),
        transform=attach_fold(plan),
        chunk_rows=batch,
        window_rows=batch * FOLD_WINDOW if batch_by_fold() else None,
    )
    # Ray Data joins a read task's chunks into blocks of up to 128 MiB: cap them at about one
    # batch of rows (pixels, masks and the small columns) so the chunks stay apart
    _, height, width = manifest.shape
    pixels = int(np.prod(manifest.shape)) * np.dtype(manifest.dtype).itemsize
    ds.context.target_max_block_size = batch * (pixels + 2 * height * width + 64)
    return ds


def local_cell_tables(plan: ExplainPlan, config: ExplainConfig):
    """The planned cells with their fold, read here with pyarrow in tables of at most one batch
    (the same reader as the Ray read tasks)."""
    items = row_groups(plan.dataset.shard_paths)
    reader = RowGroupReader(
        cell_columns(plan), attach_fold(plan), chunk_rows=config.cells_per_batch()
    )
    return reader(
        {"path": [i["path"] for i in items], "row_group": [i["row_group"] for i in items]}
    )


def fold_batches(tables: Iterable[pa.Table], batch_size: int) -> Iterator[pa.Table]:
    """``tables`` of cells with their fold regrouped into batches of one fold, ``batch_size``
    rows each (each fold's last one fewer). A batch of MitoCheck's row groups held cells of 4-5
    folds, so each (trial, method) ran one pass per fold on about 25 cells; on a GPU, where the
    maps wait on kernel launches rather than on arithmetic, one pass of 128 cells costs about
    what one of 25 does. At most one batch per fold is held."""
    held: dict[int, list[pa.Table]] = {}
    rows: dict[int, int] = {}
    for table in tables:
        folds = table.column("fold")
        unique = np.unique(folds.to_numpy())
        for fold in unique.tolist():
            part = table if len(unique) == 1 else table.filter(pc.equal(folds, fold))
            held.setdefault(fold, []).append(part)
            rows[fold] = rows.get(fold, 0) + part.num_rows
            while rows[fold] >= batch_size:
                merged = pa.concat_tables(held[fold])
                yield merged.slice(0, batch_size).combine_chunks()
                held[fold] = [merged.slice(batch_size)]
                rows[fold] -= batch_size
    for fold in sorted(held):
        if rows[fold]:
            yield pa.concat_tables(held[fold]).combine_chunks()


def even_batch_size(fold_cells: Iterable[int], batch_size: int) -> int:
    """The batch size that cuts each fold's cells into as few batches as ``batch_size`` does,
    of near-equal sizes: the largest over the folds of ceil(cells / batches). MitoCheck's folds
    of 655 cells made batches of 256, 256 and 143 at 256; at this size (219) they make 219, 219
    and 217, and padded to it (``MapWorker(pad_to=...)``) every call of the job has one shape."""
    sizes = [-(-n // -(-n // batch_size)) for n in fold_cells if n > 0]
    return max(sizes, default=batch_size)


EVEN_BATCHES_ENV = "CYTOTUNE_EVEN_BATCHES"


def even_batches(devices: Iterable[str]) -> bool:
    """Whether the local executor's batches are cut evenly and padded to one size
    (:func:`even_batch_size`): by default on a GPU (a new batch shape cost a worker about 0.3 s
    cold on one H200: ``bench/thread_cold.py``) when the batches hold one fold;
    ``CYTOTUNE_EVEN_BATCHES=0`` or ``1`` decides."""
    on_gpu = any(d != "cpu" for d in devices)
    return batch_by_fold() and switch(EVEN_BATCHES_ENV, default=on_gpu)


FOLD_BATCHES_ENV = "CYTOTUNE_FOLD_BATCHES"


def batch_by_fold() -> bool:
    """Whether the local executor regroups the cells by fold (:func:`fold_batches`; default),
    or explains the row groups' batches as they come (``CYTOTUNE_FOLD_BATCHES=0``, to
    compare)."""
    return switch(FOLD_BATCHES_ENV, default=True)


def _local_batches(plan: ExplainPlan, config: ExplainConfig, worker_kwargs: dict):
    """The map workers of this machine (executor ``local``): on one device, threads of this
    process (:func:`thread_batches`); on several GPUs, one process per GPU with its threads
    (processes.py), each with its share of the trials (or, under two trials a process, of
    the row groups)."""
    from .processes import process_devices, spread_over_processes, trial_shares

    groups = process_devices()
    cells = config.cells_per_batch()
    # one process: it sees every cell of a fold (processes splitting the row groups see a
    # part of each, whose batches would be padded far)
    if len(groups) == 1 and even_batches(groups[0]):
        cells = even_batch_size(plan.cells["fold"].value_counts().tolist(), cells)
        worker_kwargs = {**worker_kwargs, "pad_to": cells}
    if len(groups) == 1:
        tables = local_cell_tables(plan, config)
        if batch_by_fold():
            tables = fold_batches(tables, cells)
        tables = prefetch(tables)
        yield from thread_batches(tables, groups[0], worker_kwargs)
        return
    from .worker import SUMMARY_SCHEMA

    read = RowGroupReader(cell_columns(plan), attach_fold(plan), chunk_rows=cells)
    items = row_groups(plan.dataset.shard_paths)
    shares = trial_shares(worker_kwargs["units"], len(groups))
    batch = cells if batch_by_fold() else None
    if shares is None:
        runs = functools.partial(thread_batches, worker_kwargs=worker_kwargs, batch_size=batch)
    else:
        runs = [
            functools.partial(
                thread_batches, worker_kwargs=trials_only(worker_kwargs, share), batch_size=batch
            )
            for share in shares
        ]
    yield from spread_over_processes(groups, items, read, runs, SUMMARY_SCHEMA)


def trials_only(worker_kwargs: dict, trials: list[str]) -> dict:
    """The map workers' arguments narrowed to ``trials``."""
    keep = set(trials)
    units = {t: folds for t, folds in worker_kwargs["units"].items() if t in keep}
    methods = {t: ms for t, ms in worker_kwargs["trial_methods"].items() if t in keep}
    return {**worker_kwargs, "units": units, "trial_methods": methods}


def thread_batches(
    tables: Iterable[pa.Table],
    devices: list[str],
    worker_kwargs: dict,
    batch_size: int | None = None,
):
    """Summaries of ``tables`` explained by map workers in threads of this process,
    :func:`local_workers` per device of ``devices``: with one worker its map parts are written
    in a thread while the next batch is explained, with several each explains and writes in a
    thread of its own. With ``batch_size`` the tables are regrouped first (:func:`fold_batches`)."""
    import torch

    if batch_size is not None:
        tables = fold_batches(tables, batch_size)

    from .worker import MapWorker

    # the first worker reads and builds each model once; the others share its models on its
    # device (CAM hooks keep their own thread's activations) or copy them onto another GPU once
    workers: list[MapWorker] = []
    holders: dict[str, MapWorker] = {}
    devices = worker_devices(devices)
    for device in devices:
        source = holders.get(device, workers[0] if workers else None)
        workers.append(MapWorker(**worker_kwargs, device=device, models_from=source))
        holders.setdefault(device, workers[-1])
    for device in set(devices):
        if device.startswith("cuda"):  # the models are there before other streams use them
            torch.cuda.synchronize(device)
    if len(workers) > 1:
        # a worker's call writes its parts and records its first batch (explain/workers/)
        yield from in_threads(tables, workers, lambda w, table: w(table))
    else:
        yield from _pipelined(tables, workers[0])
    for worker in workers:
        worker.timing["done"] = time.time()
        worker.timing["memory_retries"] = memory_retries()
        worker._report()


def _pipelined(tables, worker):
    """One worker: each batch's parts written in a thread while the next batch is explained."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="explain-write") as writes:
        pending = None
        for table in tables:
            maps = worker.explain(table)
            if pending is not None:
                yield pending.result()
            pending = writes.submit(worker.write, maps)
        if pending is not None:
            yield pending.result()


def _batches(plan: ExplainPlan, config: ExplainConfig, worker_kwargs: dict):
    """Ray Data reads the planned cells -> explain actors started up front (pool.py)."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    num_gpus = config.gpus_per_actor if gpus else 0
    actors = config.actors or (max(1, int(gpus / config.gpus_per_actor)) if gpus else 1)
    worker_kwargs = {**worker_kwargs, "device": None if gpus else "cpu"}
    joined = bool(config.address or os.environ.get("RAY_ADDRESS"))
    return run_actor_pool(
        cell_blocks(plan, config),
        worker_kwargs,
        actors,
        num_gpus,
        config.cells_per_batch(),
        joined_cluster=joined,
    )


@contextlib.contextmanager
def cudnn_heuristics():
    """cuDNN picks its convolution plans by heuristics while the maps run in this process,
    whatever the caller set (restored after): in benchmark mode each map thread autotuned its own
    plans for the padded batch shape, and the MitoCheck job's first batch came 16.6-25.5 s in
    instead of about 10 s (BENCHMARKS.md, session 20, ``localcb``), for no faster batches after
    (92.9k vs 92.1k passes/s: ``bench/pass_profile.py``). Ray actors and the local executor's
    device processes start with the default (heuristics)."""
    import torch

    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def run_maps(
    plan: ExplainPlan, config: ExplainConfig, state: ExplainState, progress: bool = True
) -> dict:
    """Compute every pending (trial, method) map table. Returns rows written per part."""
    from cytotune.engine.cluster import ensure_ray

    todo = pending_parts(plan, config, state)
    if not todo:
        return {}
    local = resolve_executor(config) == "local"
    if not local:
        ensure_ray(config.address)
    trials = {t.trial_id: t for t in plan.trials}
    folds_needed = set(plan.cells["fold"].unique().tolist())
    units = {t: {f: d for f, d in trials[t].fold_dirs.items() if f in folds_needed} for t in todo}
    methods = {m: config.method_options[m] for ms in todo.values() for m in ms}
    targets = 1 if plan.manifest.task == "classification" else len(plan.manifest.targets)
    total = len(plan.cells) * targets * sum(len(ms) for ms in todo.values())
    worker_kwargs = {
        "units": units,
        "methods": methods,
        "manifest": plan.manifest.to_dict(),
        "precision": config.precision,
        "trial_methods": todo,
    }
    parts = [(t, m) for t, ms in todo.items() for m in ms]
    run_id = uuid.uuid4().hex[:10]
    worker_kwargs["output"] = {"study_dir": str(plan.study_dir), "run_id": run_id}
    staged = StagedParts(plan.study_dir, parts, run_id)
    rows = dict.fromkeys(parts, 0)
    by_writer: dict[str, int] = {}  # map rows per actor
    failures: dict[tuple[str, str], str] = {}
    start = time.perf_counter()
    state.update(maps_run={"run_id": run_id, "started": time.time()})
    state.maps_run_id = run_id
    first = None
    try:
        bar = tqdm(total=total, unit="map", desc="explain maps", disable=not progress)
        with cudnn_heuristics(), bar:
            batches = _local_batches if local else _batches
            for summary in batches(plan, config, worker_kwargs):
                first = first or time.perf_counter()
                state.maps_warm.set()
                for row in summary.to_pylist():
                    part = (row["trial_id"], row["method"])
                    if row["error"] is not None:
                        failures[part] = row["error"]
                    rows[part] += row["rows"]
                    writer = row.get("writer") or "driver"
                    by_writer[writer] = by_writer.get(writer, 0) + row["rows"]
                    bar.update(row["rows"])
    except BaseException:
        staged.abort()
        raise
    seconds = time.perf_counter() - start
    written = {}
    # the rows stored, not the rows reported: a batch rerun after a lost actor reports twice.
    # Each commit reads its parts' keys (28 parts each of the MitoCheck job's 15 tables: 1 s
    # one after another on an H100 host), so they run in threads
    done = [part for part in parts if part not in failures]
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(done)))) as pool:
        commits = {part: pool.submit(staged.commit, part) for part in done}
    errors = {part: c.exception() for part, c in commits.items() if c.exception() is not None}
    for part in parts:
        name = part_name(*part)
        if part in failures:
            state.fail(name, failures[part])
            continue
        if part in errors:  # not published (an older table of it stays): said, raised below
            state.fail(name, f"its map table could not be published: {errors[part]!r}")
            continue
        rows[part] = commits[part].result()
        written[name] = rows[part]
        state.clear_failure(name)
        state.finish(name, config.method_key(part[1]), rows=rows[part], seconds=round(seconds, 3))
    staged.abort()  # staging left by failed parts
    if errors:  # every part that could be published is recorded first
        error = next(iter(errors.values()))
        for part, other in errors.items():
            error.add_note(f"publishing the map table of {part_name(*part)} failed: {other!r}")
        raise error
    state.time("maps", seconds)
    state.time("maps_first_batch", (first or start) - start)
    state.update(maps_rows_per_actor=by_writer)
    return written
