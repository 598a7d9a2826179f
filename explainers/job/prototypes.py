"""Stage 5: prototype mosaics of models that declare ``Capabilities(prototypes=True)``.

Per fold model and prototype: the ``top`` training patches that activate it most (smallest
latent distance), each cut at the prototype's receptive-field size around the latent patch
centre, as a mosaic; and its activation (similarity) map on the validation cell it matches best,
with the receptive-field box around the maximum (not a percentile box).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..methods.channels import overlays
from .config import ExplainConfig
from .figures import box, grid, save_png
from .layout import (
    PROTOTYPE_COLUMNS,
    explain_dir,
    prototype_path,
    read_index,
    write_frame,
)
from .plan import ExplainPlan
from .state import ExplainState

TOP_PATCHES = 20
# prototypes whose crops are read and drawn at once (a block's images and composites in memory)
PROTOTYPE_BLOCK = 256


def _crop(rgb: np.ndarray, cy: float, cx: float, size: int) -> np.ndarray:
    """A size x size window centred at (cy, cx), padded with black outside the image."""
    h, w = rgb.shape[:2]
    out = np.zeros((size, size, 3), np.uint8)
    top, left = int(round(cy - size / 2)), int(round(cx - size / 2))
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(h, top + size), min(w, left + size)
    out[y0 - top : y1 - top, x0 - left : x1 - left] = rgb[y0:y1, x0:x1]
    return out


def fold_prototypes(
    fold_dir: str,
    dataset_dir: str,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    study_dir: str,
    trial_id: str,
    fold: int,
    top: int = TOP_PATCHES,
    batch_size: int = 256,
) -> list[dict]:
    """Mosaics and activation maps of one fold model's prototypes; returns PROTOTYPE rows."""
    import torch
    import torch.nn.functional as F
    from cytotune.engine.data.augment import normalize
    from cytotune.engine.data.dataset import CellDataset
    from cytotune.engine.train.checkpoint import load_fold

    from ..quality import prototype_diversity
    from .worker import pick_device

    device = pick_device()
    dataset = CellDataset(dataset_dir)
    names = list(dataset.manifest.channel_names)
    loaded = load_fold(fold_dir, device)
    model, offset, scale = loaded.model, loaded.offset, loaded.scale
    masks = dataset.masks() if dataset.manifest.has_mask and loaded.takes_mask else None
    n_proto = model.prototypes.shape[0]
    rf = int(model.receptive_field())
    _, height, width = dataset.manifest.shape

    def distances(rows):
        x = normalize(
            torch.from_numpy(dataset.images(rows).astype(np.float32)).to(device), offset, scale
        )
        mask = None if masks is None else torch.from_numpy(masks[rows]).float()[:, None].to(device)
        with torch.no_grad():
            z, d = model.distances(x, mask) if mask is not None else model.distances(x)
        # z (B, D, h, w), d (B, h*w, M)
        return d.float(), z.shape[-2:]

    best_d = np.full((n_proto, 0), np.inf)
    best_row = np.zeros((n_proto, 0), np.int64)
    best_pos = np.zeros((n_proto, 0), np.int64)
    for start in range(0, len(train_rows), batch_size):
        rows = train_rows[start : start + batch_size]
        d, (h, w) = distances(rows)
        dmin, pos = d.min(1)  # (B, M) best patch of each image
        dmin, pos = dmin.T.cpu().numpy(), pos.T.cpu().numpy()  # (M, B)
        best_d = np.concatenate([best_d, dmin], 1)
        best_row = np.concatenate([best_row, np.broadcast_to(rows, dmin.shape)], 1)
        best_pos = np.concatenate([best_pos, pos], 1)
        keep = np.argsort(best_d, 1, kind="stable")[:, :top]
        best_d, best_row, best_pos = (
            np.take_along_axis(a, keep, 1) for a in (best_d, best_row, best_pos)
        )
    sy, sx = height / h, width / w
    diversity = prototype_diversity(model.prototypes.detach().cpu().numpy())
    duplicate_of = {j: i for i, j in diversity["duplicate_pairs"]}
    # activation on the validation cell each prototype matches best
    val_d, _ = distances(val_rows[:batch_size])
    act = similarity_maps(model, val_d, (h, w))  # (B, M, h, w)
    # each prototype's best-matching validation cell, its map at crop size and its peak: for
    # all prototypes at once (one copy off the device, not a few per prototype)
    best_cells = act.amax((2, 3)).argmax(0)  # (M,)
    chosen = act[best_cells, torch.arange(n_proto, device=act.device)]  # (M, h, w)
    amaps = (
        F.interpolate(chosen[:, None], size=(height, width), mode="bilinear", align_corners=False)[
            :, 0
        ]
        .cpu()
        .numpy()
    )
    peaks = chosen.flatten(1).argmax(1).cpu().numpy()
    best_cells = best_cells.cpu().numpy()
    records = []
    for block in range(0, n_proto, PROTOTYPE_BLOCK):  # bounded memory, however many prototypes
        ms = range(block, min(block + PROTOTYPE_BLOCK, n_proto))
        # one read for every crop this block draws: its best training rows (a row may be among
        # several prototypes' best: its composite is drawn once) and its validation cells
        rows, slots = np.unique(best_row[ms.start : ms.stop], return_inverse=True)
        slots = slots.reshape(len(ms), -1)  # (block, top) index into rows
        cells = val_rows[best_cells[ms.start : ms.stop]]
        images = dataset.images(np.concatenate([rows, cells]))
        composites = overlays(images[: len(rows)], channel_names=names)  # (U, H, W, 3)
        activations = overlays(  # (block, H, W, 3)
            images[len(rows) :], amaps[ms.start : ms.stop], channel_names=names, alpha=0.6
        )
        for k, m in enumerate(ms):
            tiles = []
            for slot, pos in zip(slots[k], best_pos[m]):
                r, c = divmod(int(pos), w)
                tiles.append(_crop(composites[slot], (r + 0.5) * sy, (c + 0.5) * sx, rf))
            path = prototype_path(study_dir, trial_id, fold, m)
            save_png(path, grid(tiles, 5), scale=max(1, -(-96 // rf)))
            r, c = divmod(int(peaks[m]), w)
            cy, cx = (r + 0.5) * sy, (c + 0.5) * sx
            rgb = box(
                activations[k], int(cy - rf / 2), int(cx - rf / 2), int(cy + rf / 2),
                int(cx + rf / 2),
            )  # fmt: skip
            save_png(path.with_name(f"prototype_{m}_activation.png"), rgb, scale=4)
            records.append(
                {
                    "trial_id": trial_id,
                    "fold": fold,
                    "prototype": m,
                    "class": int(model.prototype_class[m]),
                    "path": str(path.relative_to(study_dir)),
                    "duplicate_of": duplicate_of.get(m, -1),
                    "receptive_field": rf,
                    "top_distance": float(best_d[m, 0]),
                }
            )
    return records


def similarity_maps(model, d, hw):
    """Similarity of every latent patch to every prototype: (B, h*w, M) distances -> (B, M, h, w)."""
    return model.similarities(d).transpose(1, 2).reshape(d.shape[0], d.shape[2], *hw)


def run_prototypes(
    plan: ExplainPlan, config: ExplainConfig, state: ExplainState, max_train: int = 4096
) -> pd.DataFrame:
    from cytotune.search_spaces.models import capabilities_of

    from .executor import resolve_executor, worker_devices

    proto = [t for t in plan.trials if capabilities_of(t.family).prototypes]
    path = explain_dir(plan.study_dir) / "prototypes.parquet"
    if not proto:
        return pd.DataFrame(columns=list(PROTOTYPE_COLUMNS))
    key = f"top{TOP_PATCHES}-{max_train}-{config.seed}-{config.split}"
    if state.done("prototypes", key) and path.is_file() and not config.overwrite:
        return read_index(plan.study_dir, "prototypes")
    meta = plan.dataset.metadata()[["cell_id"]].reset_index(names="row")
    folds = meta.merge(plan.folds, on="cell_id")
    rng = np.random.default_rng(config.seed)
    jobs = []
    for trial in proto:
        for fold, fold_dir in trial.fold_dirs.items():
            train = folds.loc[folds["fold"] != fold, "row"].to_numpy()
            if len(train) > max_train:
                train = np.sort(rng.choice(train, max_train, replace=False))
            val = plan.cells.loc[plan.cells["fold"] == fold, "row"].to_numpy()
            if len(val) == 0:
                continue
            dataset = str(plan.dataset.path)
            jobs.append((fold_dir, dataset, train, val, str(plan.study_dir), trial.trial_id, fold))
    if resolve_executor(config) == "local":  # no Ray to start: here or in a process of its own
        from .processes import (
            call_in_process,
            map_in_threads,
            side_stages_in_processes,
            wait_for_maps,
        )

        work = (fold_prototypes, jobs, len(worker_devices()))
        if side_stages_in_processes():
            wait_for_maps(state)
            results = call_in_process(map_in_threads, *work, name="cytotune-explain-prototypes")
        else:
            results = map_in_threads(*work)
    else:
        import ray
        from cytotune.engine.cluster import ensure_ray

        ensure_ray(config.address)
        gpus = ray.cluster_resources().get("GPU", 0)
        task = ray.remote(fold_prototypes).options(
            num_gpus=config.gpus_per_actor if gpus else 0, num_cpus=1
        )
        results = ray.get([task.remote(*job) for job in jobs])
    records = [r for result in results for r in result]
    table = pd.DataFrame(records)
    write_frame(table, path)
    state.finish("prototypes", key, prototypes=len(table))
    return table
