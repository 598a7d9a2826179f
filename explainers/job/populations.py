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
from concurrent.futures import ThreadPoolExecutor

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


def run_population(
    plan: ExplainPlan, config: ExplainConfig, state: ExplainState, eps: float = 1e-3
) -> pd.DataFrame:
    """Write population maps and ``population.parquet``; returns the summary table. The
    (trial, method) pairs run in threads (numpy, zlib and file writes release the GIL: the
    MitoCheck job's 10 pairs x 16 classes took 9.5 s one after another)."""
    classes, groups = class_of_cells(plan)
    key = config.maps_key() + f"-r{config.radius}-t{config.threshold}"
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
    shape_means = gmean_images(plan, classes, groups, eps) if todo else None
    rows: list[dict] = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1, max(1, len(todo)))) as pool:
        futures = {
            w: pool.submit(_population_of, plan, config, w[2:], (classes, groups), shape_means, eps)
            for w in todo
        }
        for w in work:
            if not isinstance(w, tuple):
                rows += w
                continue
            rows += futures[w].result()
            state.finish(w[0], w[1])
    table = pd.DataFrame(rows)
    if not table.empty:
        write_frame(table, summary_path)
    return table


def _population_of(plan, config, what, populations, shape_means, eps) -> list[dict]:
    """One ``what`` = (trial_id, method, map table): its geometric-mean maps per class of
    ``populations`` (classes, each cell's class), their files and summary rows."""
    (trial_id, method, source), (classes, groups) = what, populations
    names = list(plan.manifest.channel_names)
    hw = tuple(plan.manifest.shape[1:])
    map_means = gmean_maps(source, classes, groups, hw, eps, plan.manifest.task != "classification")
    rows: list[dict] = []
    for cls in classes:
        if cls not in map_means or cls not in shape_means:
            continue
        rows += _write_class(
            plan,
            config,
            trial_id,
            method,
            cls,
            shape_means[cls],
            map_means[cls][0],
            names,
            int((groups == cls).sum()),
        )
    return rows


def _write_class(plan, config, trial_id, method, cls, image, cam, names, n) -> list[dict]:
    out = population_dir(plan.study_dir, trial_id, method, cls)
    channels = [image[c] for c in range(image.shape[0])] + [image.mean(0)]
    labels = names + ["all"]
    results = [compare_population_maps(ch, cam, config.radius, config.threshold) for ch in channels]
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
    rel = lambda name: str((out / name).relative_to(plan.study_dir))  # noqa: E731
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
