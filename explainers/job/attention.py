"""Stage 6: attention maps of models that declare ``Capabilities(attention_maps=True)``, per
channel pair.

For a block with queries from channel i and keys from channel j, the attention a key token
receives (mean over heads and queries) says where in channel j the model looked while reading
channel i. Each cell gets one panel per pair: that map, upsampled, over channel j's image
(a block named ``"all"``: one self-attention map over all channels).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..methods.channels import overlay
from .config import ExplainConfig
from .figures import grid, save_png
from .layout import ATTENTION_COLUMNS, attention_path, explain_dir, read_index, write_frame
from .plan import ExplainPlan
from .state import ExplainState

MAX_CELLS = 16


def received_attention(weights, size: tuple[int, int]):
    """(B, heads, Tq, Tk) weights of a square token grid -> (B, H, W) attention per key position."""
    import torch.nn.functional as F

    b, _, _, tk = weights.shape
    side = math.isqrt(tk)
    if side * side != tk:
        raise ValueError(f"{tk} key tokens do not form a square grid; cannot map them to pixels")
    received = weights.float().mean((1, 2)).reshape(b, 1, side, side)  # (B, 1, s, s)
    return F.interpolate(received, size=size, mode="bilinear", align_corners=False)[:, 0]


def pair_panels(
    model, image: np.ndarray, maps: dict[str, np.ndarray], names: list[str]
) -> np.ndarray:
    tiles = []
    for pair, amap in maps.items():
        if pair == "all":
            tiles.append(overlay(image, amap, channel_names=names, alpha=0.6))
            continue
        j = int(pair.split("-")[1])
        tiles.append(overlay(image[j : j + 1], amap, channel_names=[names[j]], alpha=0.6))
    return grid(tiles, len(tiles))


def attention_in_process(config: ExplainConfig) -> bool:
    """Whether the figures are drawn in a process of their own, beside the maps (the local
    executor where the side stages run in processes: on a GPU). Otherwise they are drawn in
    this process after the maps: their CPU forward and PNGs (about 7 s on the MitoCheck job)
    took the interpreter lock from the maps' start-up."""
    from .executor import resolve_executor
    from .processes import side_stages_in_processes

    return side_stages_in_processes() and resolve_executor(config) == "local"


def run_attention(plan: ExplainPlan, config: ExplainConfig, state: ExplainState) -> pd.DataFrame:
    from cytotune.search_spaces.models import capabilities_of

    from .processes import call_in_process, map_in_threads

    path = explain_dir(plan.study_dir) / "attention.parquet"
    trials = [t for t in plan.trials if capabilities_of(t.family).attention_maps]
    if not trials:
        return pd.DataFrame(columns=list(ATTENTION_COLUMNS))
    key = f"{config.maps_key()}-{MAX_CELLS}"
    if state.done("attention", key) and path.is_file() and not config.overwrite:
        return read_index(plan.study_dir, "attention")
    names = list(plan.manifest.channel_names)
    hw = tuple(plan.manifest.shape[1:])
    sample = plan.cells.sample(n=min(MAX_CELLS, len(plan.cells)), random_state=config.seed)
    jobs = []  # one per trial and fold: the fold model's figures of its cells
    for trial in trials:
        for fold, group in sample.groupby("fold"):
            images = plan.dataset.images(group["row"].to_numpy()).astype(np.float32)
            cells = tuple(str(c) for c in group["cell_id"])
            jobs.append(
                (
                    plan.study_dir,
                    trial.trial_id,
                    trial.fold_dirs[int(fold)],
                    cells,
                    images,
                    names,
                    hw,
                )
            )
    if attention_in_process(config):
        drawn = call_in_process(
            map_in_threads, fold_figures, jobs, 1, name="cytotune-explain-attention"
        )
    else:
        drawn = [fold_figures(*job) for job in jobs]
    records = [record for rows in drawn for record in rows]
    table = pd.DataFrame(records, columns=list(ATTENTION_COLUMNS))
    write_frame(table, path)
    state.finish("attention", key, figures=len(table))
    return table


def fold_figures(study_dir, trial_id: str, fold_dir, cells, images, names, hw) -> list[dict]:
    """The attention figures of ``cells`` (crops ``images``) by one fold model, on the CPU;
    their index rows."""
    import torch
    from cytotune.engine.train.checkpoint import load_fold

    loaded = load_fold(fold_dir, "cpu")
    model = loaded.model
    x = loaded.normalize(images)
    with torch.no_grad():
        model(x)
    maps = {p: received_attention(w, hw).numpy() for p, w in model.attention_weights.items()}
    pairs = [
        p if p == "all" else f"{names[int(p.split('-')[0])]}->{names[int(p.split('-')[1])]}"
        for p in maps
    ]
    records = []
    for k, cell_id in enumerate(cells):
        figure = pair_panels(model, images[k], {p: m[k] for p, m in maps.items()}, names)
        out = attention_path(study_dir, trial_id, cell_id)
        save_png(out, figure, scale=3)
        records.append(
            {
                "trial_id": trial_id,
                "cell_id": cell_id,
                "path": str(out.relative_to(study_dir)),
                "pairs": pairs,
            }
        )
    return records
