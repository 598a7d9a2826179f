"""Stage 4: PNG overlays of a sample of cells per trial and method (from the stored maps):
crop | map with a colour bar in the method's units (:func:`cytotune.explainers.job.tiles.render_tile`).

The sample is the same for every trial and method (seeded), and holds misclassified cells
first (up to a quarter of it), because those are the ones people open first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from .config import ExplainConfig
from .layout import (
    OVERLAY_COLUMNS,
    decode_map,
    empty_index,
    explain_dir,
    maps_path,
    overlay_path,
    read_index,
    read_maps,
    write_frame,
)
from .plan import ExplainPlan
from .state import ExplainState
from .tiles import render_tile


def pick_cells(frame: pd.DataFrame, n: int, seed: int) -> list[str]:
    """``n`` cell ids (seeded): up to n/4 misclassified ones first, then correct ones (then
    more misclassified ones when too few are correct). Regression: all at random."""
    rng = np.random.default_rng(seed)
    classification = frame["label_index"].ge(0).any()
    is_wrong = ~frame["correct"].astype(bool) if classification else frame["correct"] & False
    wrong = rng.permutation(frame.loc[is_wrong, "cell_id"].to_numpy())
    right = rng.permutation(frame.loc[~is_wrong, "cell_id"].to_numpy())
    first = wrong[: n // 4]
    order = [*first, *right, *wrong[len(first) :]]
    return [str(c) for c in order[:n]]


@dataclass(frozen=True)
class OverlayWork:
    """What every (trial, method) pair's overlays need; it pickles (a stage child takes pairs).

    Attributes:
        study_dir: the study.
        names: the channel names.
        regression: whether the maps are of regression targets (overlays of the first).
        dataset: the dataset's directory (the crops of the cells picked).
        rows: each planned cell's row in the dataset.
        count: cells per pair (``--overlays``).
        seed: the pick's seed.
    """

    study_dir: Path
    names: tuple[str, ...]
    regression: bool
    dataset: Path | None = None
    rows: dict | None = None
    count: int = 0
    seed: int = 0


def run_overlays(plan: ExplainPlan, config: ExplainConfig, state: ExplainState) -> pd.DataFrame:
    """The (trial, method) pairs are picked and drawn by :func:`pairs_overlays`, dealt out to
    the stage processes :func:`~cytotune.explainers.job.processes.tail_processes` allows (the
    pick reads the table's labels and the crops: 1.7 s of this process's lock on one H100 when
    done here, after the maps)."""
    from .processes import map_in_processes, tail_processes

    if config.overlays == 0:
        return pd.DataFrame(columns=list(OVERLAY_COLUMNS))
    index_path = explain_dir(plan.study_dir) / "overlays.parquet"
    # --overwrite keeps nothing: an older run's table is not read (it may be of an older format)
    old = empty_index("overlays") if config.overwrite else read_index(plan.study_dir, "overlays")
    common = OverlayWork(
        Path(plan.study_dir),
        tuple(plan.manifest.channel_names),
        plan.manifest.task != "classification",
        Path(plan.dataset.path),
        dict(zip(plan.cells["cell_id"], plan.cells["row"].astype(int))),
        config.overlays,
        config.seed,
    )
    work: list = []  # (part, key, trial_id, method, source) or kept records
    for trial in plan.trials:
        for method in config.method_names:
            source = maps_path(plan.study_dir, trial.trial_id, method)
            if not source.exists():
                continue
            part, key = (
                f"overlays/{trial.trial_id}/{method}",
                config.method_key(method) + f"-{config.overlays}",
            )
            kept = old[(old["trial_id"] == trial.trial_id) & (old["method"] == method)]
            if state.done(part, key) and len(kept) and not config.overwrite:
                work.append(kept.to_dict("records"))
                continue
            work.append((part, key, trial.trial_id, method, source))
    todo = [w for w in work if isinstance(w, tuple)]
    # the pairs cut into as many runs as stage processes, one job each (a trial's pairs in one
    # job share the pick's crops, read once): with one job per trial the MitoCheck job's 3
    # processes drew 5 pairs each, 1.5-1.7 s after the maps on one H200
    count = min(len(todo), tail_processes())
    cuts = [k * len(todo) // count for k in range(count + 1)] if count else []
    jobs = [  # contiguous runs: a trial's pairs stay together
        (common, [(w[2], w[3], w[4]) for w in todo[cuts[k] : cuts[k + 1]]]) for k in range(count)
    ]
    drawn: dict[tuple[str, str], list[dict]] = {}
    for part in map_in_processes(pairs_overlays, jobs, 1, "overlays"):
        drawn |= part
    records: list[dict] = []
    for w in work:
        if not isinstance(w, tuple):
            records += w
            continue
        rows = drawn[(w[2], w[3])]
        records += rows
        state.finish(w[0], w[1], images=len(rows))
    index = pd.DataFrame(records, columns=list(OVERLAY_COLUMNS))
    write_frame(index, index_path)
    return index


def picked_cells(work: OverlayWork, source) -> tuple[str, ...]:
    """The cells of a (trial, method) table to draw (:func:`pick_cells`), in the table's order.
    The same for every method of a trial: the pick reads labels and predictions only."""
    meta = read_maps(source, ["cell_id", "correct", "label_index", "target_index"])
    if work.regression:  # overlays of the first target
        meta = meta.filter(pc.equal(meta.column("target_index"), 0))
    frame = meta.select(["cell_id", "correct", "label_index"]).to_pandas()
    chosen = set(pick_cells(frame, work.count, work.seed))
    return tuple(c for c in frame["cell_id"] if c in chosen)


def pairs_overlays(work: OverlayWork, pairs: list[tuple]) -> dict[tuple[str, str], list[dict]]:
    """:func:`overlays_of` for each ``(trial_id, method, map table)``, the cells
    :func:`picked_cells` chooses (their crops read once per pick); ``{(trial_id, method): index
    rows}``."""
    from cytotune.engine.data import CellDataset

    dataset = CellDataset(work.dataset)
    crops: dict[tuple[str, ...], np.ndarray] = {}
    out = {}
    for trial_id, method, source in pairs:
        picked = picked_cells(work, source)
        if picked not in crops:
            crops[picked] = dataset.images(np.array([work.rows[c] for c in picked], np.int64))
        out[(trial_id, method)] = overlays_of(work, trial_id, method, source, picked, crops[picked])
    return out


def overlays_of(work: OverlayWork, trial_id, method, source, picked, images) -> list[dict]:
    """The overlay PNGs of one (trial, method) for the cells ``picked`` (crops ``images`` in
    the same order): crop | map with a colour bar in the method's units (what the dashboard
    draws); their index rows."""
    table = read_maps(source, filter=pc.field("cell_id").isin(list(picked)))
    if work.regression:
        table = table.filter(pc.equal(table.column("target_index"), 0))
    rows = table.to_pylist()
    if [r["cell_id"] for r in rows] != list(picked):
        raise RuntimeError(f"the map table {source} changed while its overlays were drawn")
    records = []
    for image, row in zip(images, rows):
        amap = decode_map(row["map"], row["map_shape"], image.shape[-2:])
        path = overlay_path(work.study_dir, trial_id, method, row["cell_id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(render_tile(image, amap, method, channel_names=list(work.names)))
        records.append(
            {
                "trial_id": trial_id,
                "method": method,
                "cell_id": row["cell_id"],
                "path": str(path.relative_to(work.study_dir)),
                "label": row["label"],
                "prediction": row["prediction"],
                "correct": bool(row["correct"]),
            }
        )
    return records
