"""Stage 2: population maps per trial, method and class (the seed paper's global method).

Gmean-Shape: weighted geometric mean of the class's crops, each channel scaled by the dataset's
99th percentile. Gmean-<method>: geometric mean of the cells' maps (positive part, summed over
channels, each scaled to a maximum of 1 so every cell counts alike). Both stream over the data
(log-space sums), then a patch-wise Pearson map compares them per channel and for the channel
mean, with the shares of pixels above ``|r| > threshold``.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from cytotune.engine.io import atomic_write_bytes

from ..methods.channels import overlay
from ..population import PerClassGeometricMean, compare_population_maps
from .config import ExplainConfig
from .figures import diverging, grid, save_png
from .layout import (
    empty_index,
    explain_dir,
    finite_maps,
    iter_maps,
    maps_path,
    population_dir,
    read_index,
    upsample_bilinear,
    write_frame,
)
from .plan import ExplainPlan
from .state import ExplainState
from .tiles import DIVERGING_LUT, render_tile, with_bar

CHUNK = 2048


def class_of_cells(plan: ExplainPlan) -> tuple[list[str], pd.Series]:
    """Population groups and each planned cell's group (true class; ``all`` for regression)."""
    if plan.manifest.task != "classification":
        return ["all"], pd.Series("all", index=plan.cells["cell_id"].to_numpy())
    meta = plan.dataset.metadata().set_index("cell_id")["label"]
    return list(plan.manifest.classes), meta.loc[plan.cells["cell_id"].to_numpy()]


def image_scale(plan: ExplainPlan) -> np.ndarray:
    p99 = np.asarray(plan.manifest.stats.p99, dtype=float)
    return np.where(p99 > 0, p99, 1.0)[:, None, None]  # (C, 1, 1)


def gmean_images(plan: ExplainPlan, classes: list[str], groups: pd.Series, eps: float) -> dict:
    """Gmean-Shape per class, streaming over the planned cells in chunks."""
    acc = PerClassGeometricMean(classes, plan.manifest.shape, eps=eps)
    rows = plan.cells["row"].to_numpy()
    scale = image_scale(plan)
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        images = np.clip(plan.dataset.images(chunk).astype(np.float64) / scale, 0, 1)
        acc.update(images, groups.to_numpy()[start : start + CHUNK])
    return acc.results()


def gmean_maps(
    path, classes: list[str], groups: pd.Series, hw: tuple[int, int], eps: float, regression: bool
) -> dict:
    """Gmean of one (trial, method) map table per class (regression: first target only). Read
    as Arrow columns, not data frames: the population stage's threads share the interpreter
    lock with the other stages, and the frames were a third of this function's share of it."""
    import pyarrow.compute as pc

    acc = PerClassGeometricMean(classes, (1, *hw), eps=eps)
    lookup = dict(zip(groups.index.tolist(), groups.tolist()))
    columns = ["cell_id", "map", "map_shape", "target_index"]
    for batch in iter_maps(path, columns, batch_size=CHUNK):
        if regression:  # one population per target would repeat the cells: use the first
            batch = batch.filter(pc.equal(batch.column("target_index"), 0))
        if batch.num_rows == 0:
            continue
        shape = tuple(batch.column("map_shape")[0].as_py())
        blob = b"".join(batch.column("map").to_pylist())
        maps = np.frombuffer(blob, np.float16).reshape(batch.num_rows, *shape).astype(np.float32)
        maps = finite_maps(maps)  # old tables: inf where a value passed float16's range
        maps = upsample_bilinear(maps, hw).astype(np.float64)  # a CAM at its layer's size
        maps = np.clip(maps, 0, None).sum(1, keepdims=True)  # (B, 1, H, W)
        peak = maps.reshape(batch.num_rows, -1).max(1)
        maps = np.where(
            peak[:, None, None, None] > 0, maps / np.maximum(peak, 1e-30)[:, None, None, None], 0
        )
        acc.update(maps, [lookup[c] for c in batch.column("cell_id").to_pylist()])
    return acc.results()


def _save_npy(path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.float32))
    atomic_write_bytes(path, buffer.getvalue())


@dataclass(frozen=True)
class PopulationWork:
    """What every (trial, method) pair's population figures need; it pickles, so a stage child
    can take pairs (:func:`~cytotune.explainers.job.processes.map_in_processes`)."""

    study_dir: Path
    names: tuple[str, ...]
    hw: tuple[int, int]
    regression: bool
    radius: int
    threshold: float
    classes: tuple[str, ...]
    groups: pd.Series  # each planned cell's population, indexed by cell id
    shape_means: dict
    eps: float


def population_work(plan, config, classes, groups, shape_means, eps: float) -> PopulationWork:
    """The :class:`PopulationWork` of ``plan`` with the classes' mean crops ``shape_means``."""
    return PopulationWork(
        study_dir=Path(plan.study_dir),
        names=tuple(plan.manifest.channel_names),
        hw=tuple(plan.manifest.shape[1:]),
        regression=plan.manifest.task != "classification",
        radius=config.radius,
        threshold=config.threshold,
        classes=tuple(classes),
        groups=groups,
        shape_means=shape_means,
        eps=eps,
    )


def run_population(
    plan: ExplainPlan,
    config: ExplainConfig,
    state: ExplainState,
    eps: float = 1e-3,
    maps_ready=None,
) -> pd.DataFrame:
    """Write population maps and ``population.parquet``; returns the summary table. With
    ``maps_ready`` (the wait for a maps stage beside this one) the classes' mean crops are
    computed before the wait. The (trial, method) pairs go to stage processes where :func:`tail_processes` allows (on one
    H100 this stage and the overlays shared one interpreter lock for the job's last 12 s),
    else to threads (numpy, zlib and file writes release the lock)."""
    from .processes import map_in_processes

    classes, groups = class_of_cells(plan)
    key = config.maps_key() + f"-r{config.radius}-t{config.threshold}"
    shape_means = None
    if maps_ready is not None:
        # the mean crops read no map: computed beside the maps when some part will be drawn
        # (which maps exist is known only after them; a resumed job with every part done
        # reads no crop)
        if config.overwrite or not all(
            state.done(f"population/{t.trial_id}/{m}", key + "-" + config.method_key(m))
            for t in plan.trials
            for m in config.method_names
        ):
            shape_means = gmean_images(plan, classes, groups, eps)
        maps_ready()
        state.mark("population/maps_ready")
    summary_path = explain_dir(plan.study_dir) / "population.parquet"
    old = (
        empty_index("population") if config.overwrite else read_index(plan.study_dir, "population")
    )
    work: list[tuple] = []  # (part, part_key, trial_id, method, source) or kept rows
    for trial in plan.trials:
        for method in config.method_names:
            part = f"population/{trial.trial_id}/{method}"
            source = maps_path(plan.study_dir, trial.trial_id, method)
            if not source.exists():
                continue  # the method failed on this trial (see explain.json failures)
            part_key = key + "-" + config.method_key(method)
            if state.done(part, part_key) and not config.overwrite and not old.empty:
                kept = old[(old["trial_id"] == trial.trial_id) & (old["method"] == method)]
                if len(kept):
                    work.append(kept.to_dict("records"))
                    continue
            work.append((part, part_key, trial.trial_id, method, source))
    todo = [w for w in work if isinstance(w, tuple)]
    common = None
    if todo:
        if shape_means is None:
            shape_means = gmean_images(plan, classes, groups, eps)
        common = population_work(plan, config, classes, groups, shape_means, eps)
    jobs = [(common, *w[2:]) for w in todo]
    threads = min(8, os.cpu_count() or 1, max(1, len(todo)))
    done = dict(zip(todo, map_in_processes(population_of, jobs, threads, "population")))
    state.mark("population/drawn")
    rows: list[dict] = []
    for w in work:
        if not isinstance(w, tuple):
            rows += w
            continue
        rows += done[w]
        state.finish(w[0], w[1])
    table = pd.DataFrame(rows)
    if not table.empty:
        write_frame(table, summary_path)
    return table


def population_of(work: PopulationWork, trial_id: str, method: str, source) -> list[dict]:
    """One (trial, method) map table: its geometric-mean maps per class, their files and
    summary rows."""
    map_means = gmean_maps(
        source, list(work.classes), work.groups, work.hw, work.eps, work.regression
    )
    rows: list[dict] = []
    for cls in work.classes:
        if cls not in map_means or cls not in work.shape_means:
            continue
        n = int((work.groups == cls).sum())
        rows += _write_class(
            work, trial_id, method, cls, work.shape_means[cls], map_means[cls][0], n
        )
    return rows


def _write_class(work: PopulationWork, trial_id, method, cls, image, cam, n) -> list[dict]:
    names = list(work.names)
    out = population_dir(work.study_dir, trial_id, method, cls)
    channels = [image[c] for c in range(image.shape[0])] + [image.mean(0)]
    labels = names + ["all"]
    results = [compare_population_maps(ch, cam, work.radius, work.threshold) for ch in channels]
    correlation = np.stack([r["r"] for r in results])  # (C + 1, H, W)
    _save_npy(out / "gmean_image.npy", image)
    _save_npy(out / "gmean_map.npy", cam)
    _save_npy(out / "correlation.npy", correlation)
    save_png(out / "gmean_image.png", overlay(image, None, channel_names=names), scale=4)
    # crop | geometric-mean map with its colour bar (units of the method, scaled to max 1)
    (out / "gmean_map.png").write_bytes(
        render_tile(image, cam[None], method, channel_names=names, percentile=100.0)
    )
    save_png(
        out / "correlation.png",
        with_bar(
            grid([diverging(r) for r in correlation], len(correlation)),
            DIVERGING_LUT,
            (-1.0, 1.0),
            "local Pearson r (map vs channel)",
            scale=4,
        ),
    )
    rel = lambda name: str((out / name).relative_to(work.study_dir))  # noqa: E731
    return [
        {
            "trial_id": trial_id,
            "method": method,
            "class": cls,
            "channel": label,
            "n": n,
            "positive_ratio": r["positive_ratio"],
            "negative_ratio": r["negative_ratio"],
            "mean_r": r["mean_r"],
            "gmean_image": rel("gmean_image.png"),
            "gmean_map": rel("gmean_map.png"),
            "correlation": rel("correlation.png"),
        }
        for label, r in zip(labels, results)
    ]
