"""Stage 4: PNG overlays of a sample of cells per trial and method (from the stored maps):
crop | map with a colour bar in the method's units (:func:`cytotune.explainers.job.tiles.render_tile`).

The sample is the same for every trial and method (seeded), and holds misclassified cells
first (up to a quarter of it), because those are the ones people open first.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
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


def run_overlays(plan: ExplainPlan, config: ExplainConfig, state: ExplainState) -> pd.DataFrame:
    if config.overlays == 0:
        return pd.DataFrame(columns=list(OVERLAY_COLUMNS))
    names = list(plan.manifest.channel_names)
    row_of = dict(zip(plan.cells["cell_id"], plan.cells["row"]))
    index_path = explain_dir(plan.study_dir) / "overlays.parquet"
    # --overwrite keeps nothing: an older run's table is not read (it may be of an older format)
    old = empty_index("overlays") if config.overwrite else read_index(plan.study_dir, "overlays")
    records: list[dict] = []
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
                records += kept.to_dict("records")
                continue
            table = read_maps(source)
            first = table
            if plan.manifest.task != "classification":  # overlays of the first target
                first = table.filter(pc.equal(table.column("target_index"), 0))
            meta = first.select(["cell_id", "correct", "label_index"]).to_pandas()
            chosen = pick_cells(meta, config.overlays, config.seed)
            picked = first.filter(
                pc.is_in(first.column("cell_id"), value_set=pa.array(chosen, pa.string()))
            )
            images = plan.dataset.images(
                np.array([row_of[c] for c in picked.column("cell_id").to_pylist()])
            )
            for image, row in zip(images, picked.to_pylist()):
                amap = decode_map(row["map"], row["map_shape"], image.shape[-2:])
                path = overlay_path(plan.study_dir, trial.trial_id, method, row["cell_id"])
                path.parent.mkdir(parents=True, exist_ok=True)
                # crop | map with a colour bar in the method's units (what the dashboard draws)
                path.write_bytes(render_tile(image, amap, method, channel_names=names))
                records.append(
                    {
                        "trial_id": trial.trial_id,
                        "method": method,
                        "cell_id": row["cell_id"],
                        "path": str(path.relative_to(plan.study_dir)),
                        "label": row["label"],
                        "prediction": row["prediction"],
                        "correct": bool(row["correct"]),
                    }
                )
            state.finish(part, key, images=len(picked))
    index = pd.DataFrame(records, columns=list(OVERLAY_COLUMNS))
    write_frame(index, index_path)
    return index
