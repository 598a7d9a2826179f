"""Stage 1: per-cell maps. Ray Data streams the crops through GPU actors holding the fold models.

The driver routes the actors' output rows into one Parquet file per (trial, method), written to
a temporary name and renamed when the part is complete, so an interrupted run leaves no
half-written map table and a rerun recomputes only the unfinished parts.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .config import ExplainConfig
from .layout import maps_path
from .plan import ExplainPlan
from .state import ExplainState
from .worker import OUTPUT_SCHEMA, MapWorker


def part_name(trial_id: str, method: str) -> str:
    return f"maps/{trial_id}/{method}"


class AttachFold:
    """Ray Data step: keep the planned cells of a batch and add the fold whose model explains it."""

    def __init__(self, cell_ids: np.ndarray, folds: np.ndarray) -> None:
        self.cell_ids = pa.array([str(c) for c in cell_ids], pa.string())
        self.folds = pa.array(np.asarray(folds, dtype=np.int32))

    def __call__(self, table: pa.Table) -> pa.Table:
        position = pc.index_in(table.column("cell_id"), value_set=self.cell_ids)
        keep = pc.is_valid(position)
        table, position = table.filter(keep), position.filter(keep)
        table = table.append_column("fold", pc.take(self.folds, position))
        # rows of one fold together: a batch then feeds one fold model at full size
        return table.take(pc.sort_indices(table.column("fold")))


class PartWriters:
    """One Parquet writer per (trial, method), published atomically by ``commit``."""

    def __init__(self, study_dir, parts: Iterable[tuple[str, str]]) -> None:
        self.targets = {p: maps_path(study_dir, *p) for p in parts}
        self.tmp = {
            p: t.with_name(f".{t.name}.{uuid.uuid4().hex[:8]}.tmp") for p, t in self.targets.items()
        }
        self.writers: dict[tuple[str, str], pq.ParquetWriter] = {}
        self.rows = dict.fromkeys(self.targets, 0)

    def write(self, part: tuple[str, str], table: pa.Table) -> None:
        if part not in self.writers:
            self.tmp[part].parent.mkdir(parents=True, exist_ok=True)
            self.writers[part] = pq.ParquetWriter(
                self.tmp[part], table.schema, compression="lz4"
            )  # lz4: fastest to write, and smooth CAMs still compress well
        self.writers[part].write_table(table)
        self.rows[part] += table.num_rows

    def commit(self, part: tuple[str, str]) -> int:
        writer = self.writers.pop(part, None)
        if writer is None:  # no rows (no cell planned): an empty table keeps readers simple
            pq.write_table(OUTPUT_SCHEMA.empty_table().drop(["error"]), self.tmp[part])
        else:
            writer.close()
        os.replace(self.tmp[part], self.targets[part])
        return self.rows[part]

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.close()
        for path in self.tmp.values():
            path.unlink(missing_ok=True)


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
            or not maps_path(plan.study_dir, trial.trial_id, m).is_file()
        ]
        if todo:
            out[trial.trial_id] = todo
    return out


def _batches(plan: ExplainPlan, config: ExplainConfig, worker_kwargs: dict):
    """The Ray Data pipeline: read Parquet -> attach folds -> MapWorker actors."""
    import ray
    import torch

    columns = ["cell_id", "image"]
    manifest = plan.manifest
    columns += ["label"] if manifest.task == "classification" else list(manifest.targets)
    schema = pq.read_schema(plan.dataset.shard_paths[0]).names
    columns += [c for c in ("mask", "evidence") if c in schema]
    gpus = ray.cluster_resources().get("GPU", 0)
    num_gpus = config.gpus_per_actor if gpus else 0
    actors = config.actors or (max(1, int(gpus / config.gpus_per_actor)) if gpus else 1)
    worker_kwargs = {**worker_kwargs, "device": None if gpus else "cpu"}
    if not gpus and torch.cuda.is_available():
        worker_kwargs["device"] = None
    ds = ray.data.read_parquet(plan.dataset.shard_paths).select_columns(columns)
    ds = ds.map_batches(
        AttachFold(plan.cells["cell_id"].to_numpy(), plan.cells["fold"].to_numpy()),
        batch_format="pyarrow",
        batch_size=None,
        zero_copy_batch=True,
    )
    ds = ds.map_batches(
        MapWorker,
        fn_constructor_kwargs=worker_kwargs,
        batch_size=config.batch_size,
        batch_format="pyarrow",
        num_gpus=num_gpus,
        concurrency=actors,
    )
    return ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=4)


def run_maps(
    plan: ExplainPlan, config: ExplainConfig, state: ExplainState, progress: bool = True
) -> dict:
    """Compute every pending (trial, method) map table. Returns rows written per part."""
    from engine.cluster import ensure_ray

    todo = pending_parts(plan, config, state)
    if not todo:
        return {}
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
    writers = PartWriters(plan.study_dir, parts)
    failures: dict[tuple[str, str], str] = {}
    start = time.perf_counter()
    try:
        with tqdm(total=total, unit="map", desc="explain maps", disable=not progress) as bar:
            for table in _batches(plan, config, worker_kwargs):
                errors = table.column("error")
                if errors.null_count < table.num_rows:
                    bad = table.filter(pc.is_valid(errors))
                    for row in bad.select(["trial_id", "method", "error"]).to_pylist():
                        failures[(row["trial_id"], row["method"])] = row["error"]
                    table = table.filter(pc.is_null(errors))
                table = table.drop(["error"])
                for (trial_id, method), group in _group(table):
                    writers.write((trial_id, method), group)
                bar.update(table.num_rows)
    except BaseException:
        writers.abort()
        raise
    seconds = time.perf_counter() - start
    written = {}
    for part in parts:
        name = part_name(*part)
        if part in failures:
            state.fail(name, failures[part])
            continue
        written[name] = writers.commit(part)
        state.clear_failure(name)
        state.finish(
            name, config.method_key(part[1]), rows=written[name], seconds=round(seconds, 3)
        )
    writers.abort()  # removes leftovers of failed parts
    state.time("maps", seconds)
    return written


def _group(table: pa.Table):
    """(trial_id, method) -> rows of that part, in arrival order."""
    if table.num_rows == 0:
        return
    keys = pc.binary_join_element_wise(table.column("trial_id"), table.column("method"), "\x1f")
    for key in pc.unique(keys).to_pylist():
        trial_id, method = key.split("\x1f")
        yield (trial_id, method), table.filter(pc.equal(keys, key))
