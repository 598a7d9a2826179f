"""Stage 3: explanation quality per trial and method -> ``explain/quality.parquet``.

From the map tables (every explained cell): mass inside the cell mask, mass inside the evidence
mask and the pointing-game hit rate. On a seeded sample of cells (``quality_cells``), with the
fold model that explained each cell: deletion and insertion AUC, the model-parameter
randomisation check (trained vs fully re-initialised weights; Spearman, SSIM, passed) and, on
synthetic data, the evidence mass of the randomised model's maps. The randomisation check is
:func:`cytotune.explainers.quality.sanity.sanity_check` in fp32 (3 random copies, Spearman inside the
cell mask where there is one, bootstrap interval over cells, cascade, the calibrated
threshold); its ``sanity_*`` rows carry the verdict. Prototype models also get
prototype diversity. The sample runs as one Ray task per trial and method (on a GPU when there
is one), with a progress bar over the tasks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..quality import deletion_insertion, mass_inside, prototype_diversity
from ..quality.sanity import SanityConfig, combine, fp32, sanity_check
from .config import ExplainConfig
from .layout import QUALITY_COLUMNS, explain_dir, maps_path, write_frame
from .plan import ExplainPlan
from .state import ExplainState

MAP_SCORES = ("mass_cell", "mass_evidence", "pointing_hit")


def _row(trial_id, method, metric, values) -> dict:
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    return {
        "trial_id": trial_id,
        "method": method,
        "metric": metric,
        "mean": float(values.mean()) if values.size else np.nan,
        "std": float(values.std()) if values.size else np.nan,
        "n": int(values.size),
    }


def map_scores(plan: ExplainPlan, trial_id: str, method: str) -> list[dict]:
    frame = pd.read_parquet(maps_path(plan.study_dir, trial_id, method), columns=list(MAP_SCORES))
    return [
        _row(trial_id, method, name, frame[name])
        for name in MAP_SCORES
        if frame[name].notna().any()
    ]


def sample_scores(
    fold_dirs: dict[int, str],
    dataset_dir: str,
    cells: pd.DataFrame,
    methods: dict[str, dict],
    trial_id: str,
    seed: int,
    precision: str,
    prototypes: bool = True,
) -> list[dict]:
    """Deletion/insertion and randomisation scores of one trial's ``methods`` on sampled cells,
    and its prototype diversity when ``prototypes`` (a prototype model)."""
    import torch
    from cytotune.engine.data.augment import normalize
    from cytotune.engine.data.dataset import CellDataset
    from cytotune.engine.train.checkpoint import load_model
    from cytotune.search_spaces.models import capabilities_of

    from ..methods import create_explainer
    from .worker import layer_for, pick_device

    device = pick_device()
    dataset = CellDataset(dataset_dir)
    m = dataset.manifest
    masks = dataset.masks() if m.has_mask else None
    _, height, width = m.shape
    evidence, has_evidence = optional_masks(
        dataset.table(["evidence"]) if _has(dataset, "evidence") else None, height, width
    )
    collected: dict[tuple[str, str], list] = {}
    for fold, group in cells.groupby("fold"):
        rows = group["row"].to_numpy()
        model, config = load_model(fold_dirs[int(fold)], device)
        norm = config["data"]["normalization"]
        offset = torch.tensor(norm["offset"], dtype=torch.float32, device=device)
        scale = torch.tensor(norm["scale"], dtype=torch.float32, device=device)
        x = normalize(
            torch.from_numpy(dataset.images(rows).astype(np.float32)).to(device), offset, scale
        )
        takes_mask = capabilities_of(model).takes_mask
        fk = {}
        if takes_mask and masks is not None:
            fk = {"mask": torch.from_numpy(masks[rows]).float()[:, None].to(device)}
        with torch.no_grad():
            output = model(x, **fk).float()
        classification = m.task == "classification"
        target = (
            output.argmax(1)
            if classification
            else torch.zeros(len(rows), dtype=torch.long, device=device)
        )

        # perturbed batches mix images, so a per-image mask cannot follow them: score unmasked
        def score_fn(images, model=model, softmax=classification):
            out = model(images).float()
            return torch.softmax(out, 1) if softmax else out

        cell_masks = masks[rows] if masks is not None else None
        for method, options in methods.items():
            options = dict(options)
            layer = layer_for(method, model, tuple(x.shape[1:]), options.pop("layer", None))

            def attribute(
                m, method=method, layer=layer, options=options, x=x, target=target, fk=fk
            ):
                explainer = create_explainer(method, m, layer, **options)
                return explainer.attribute(x, target=target, forward_kwargs=fk)

            try:
                with fp32(device.type):  # the check means the same on CPU and GPU
                    a = attribute(model).detach().float()
                check = sanity_check(
                    attribute, model, SanityConfig(seed=seed), trained_maps=a, masks=cell_masks
                )
                faith = deletion_insertion(
                    score_fn, x, a, steps=16, baseline="blur", target=target, batch_size=256
                )
            except (RuntimeError, ValueError, TypeError):
                continue  # the map stage recorded why this method does not apply
            b = torch.from_numpy(check.random_maps)
            rec = collected.setdefault((method, "all"), [])
            rec.append(
                {
                    "deletion_auc": faith["deletion_auc"],
                    "insertion_auc": faith["insertion_auc"],
                    "randomisation_spearman": check.rho,
                    "mass_evidence_trained": _inside(a, evidence, has_evidence, rows),
                    "mass_evidence_random": _inside(b, evidence, has_evidence, rows),
                    "sanity": check,
                }
            )
        if prototypes and capabilities_of(model).prototypes:
            div = prototype_diversity(model.prototypes.detach().cpu().numpy())
            collected.setdefault(("prototypes", "all"), []).append(
                {
                    "n_distinct_prototypes": [div["n_distinct"]],
                    "duplicate_prototype_pairs": [div["n_duplicate_pairs"]],
                }
            )
    out = []
    for (method, _), parts in collected.items():
        metrics = {k for p in parts for k, v in p.items() if v is not None and k != "sanity"}
        for metric in sorted(metrics):
            values = np.concatenate(
                [np.asarray(p[metric], dtype=float) for p in parts if p.get(metric) is not None]
            )
            out.append(_row(trial_id, method, metric, values))
        if method != "prototypes":
            check = combine([p["sanity"] for p in parts], SanityConfig(seed=seed))
            n = int(np.isfinite(check.rho).sum())
            for metric, value in check.metrics().items():
                out.append({**_row(trial_id, method, metric, [value]), "n": n})
            out.append(_row(trial_id, method, "randomisation_passed", [float(check.passed)]))
            if parts[0]["mass_evidence_trained"] is not None:
                t = np.concatenate([p["mass_evidence_trained"] for p in parts])
                r = np.concatenate([p["mass_evidence_random"] for p in parts])
                out.append(
                    _row(
                        trial_id,
                        method,
                        "evidence_ratio_vs_random",
                        [np.nanmean(t) / np.nanmean(r)],
                    )
                )
    return out


def _gather(refs: list, progress: bool, desc: str) -> list:
    """``ray.get(refs)`` with a progress bar that moves as each task finishes."""
    import ray
    from tqdm.auto import tqdm

    pending = list(refs)
    with tqdm(total=len(refs), unit="task", desc=desc, disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(len(done))
    return ray.get(refs)


def _has(dataset, column: str) -> bool:
    import pyarrow.parquet as pq

    return column in pq.read_schema(dataset.shard_paths[0]).names


def optional_masks(table, height: int, width: int):
    """Evidence masks and which rows have one, or ``(None, None)`` (see worker.optional_masks)."""
    from .worker import optional_masks as read

    return (None, None) if table is None else read(table, "evidence", height, width)


def _inside(maps, masks, valid, rows):
    """Mass inside the mask per sampled cell; NaN for cells without a mask; None without any."""
    if masks is None:
        return None
    mass = mass_inside(maps.cpu().numpy(), masks[rows])
    mass[~valid[rows]] = np.nan
    return mass


def run_quality(
    plan: ExplainPlan, config: ExplainConfig, state: ExplainState, progress: bool = True
) -> pd.DataFrame:
    """Score every (trial, method) with maps; sample scores run as Ray tasks, one per pair.

    Each trial is a part of its own (``quality/<trial>``): a trial added to the top-k is scored
    alone, the others keep their rows."""
    import ray
    from cytotune.engine.cluster import ensure_ray

    path = explain_dir(plan.study_dir) / "quality.parquet"
    key = (
        config.maps_key()
        + f"-q{config.quality_cells}-"
        + "-".join(config.method_key(m) for m in config.method_names)
    )
    previous = pd.read_parquet(path) if path.is_file() else None
    kept = {
        t.trial_id
        for t in plan.trials
        if previous is not None
        and not config.overwrite
        and state.done(f"quality/{t.trial_id}", key)
        and (previous["trial_id"] == t.trial_id).any()
    }
    todo = [t for t in plan.trials if t.trial_id not in kept]
    rows: list[dict] = (
        [] if previous is None else previous[previous["trial_id"].isin(kept)].to_dict("records")
    )
    if not todo:
        return pd.DataFrame(rows, columns=QUALITY_COLUMNS)
    available: dict[str, dict[str, dict]] = {}
    for trial in todo:
        for method in config.method_names:
            if maps_path(plan.study_dir, trial.trial_id, method).exists():
                rows += map_scores(plan, trial.trial_id, method)
                available.setdefault(trial.trial_id, {})[method] = config.method_options[method]
    if config.quality_cells:
        sample = plan.cells.sample(
            n=min(config.quality_cells, len(plan.cells)), random_state=config.seed
        )
        ensure_ray(config.address)
        gpus = ray.cluster_resources().get("GPU", 0)
        task = ray.remote(sample_scores).options(
            num_gpus=config.gpus_per_actor if gpus else 0, num_cpus=1
        )
        refs = [
            task.remote(
                t.fold_dirs,
                str(plan.dataset.path),
                sample,
                {method: options},
                t.trial_id,
                config.seed,
                config.precision,
                prototypes=method == list(available[t.trial_id])[-1],  # once per trial
            )
            for t in todo
            for method, options in available.get(t.trial_id, {}).items()
        ]
        for result in _gather(refs, progress, desc=f"explain quality ({len(sample)} cells)"):
            rows += result
    table = pd.DataFrame(rows, columns=QUALITY_COLUMNS)
    write_frame(table, path)
    for trial in todo:
        state.finish(
            f"quality/{trial.trial_id}", key, rows=int((table.trial_id == trial.trial_id).sum())
        )
    return table
