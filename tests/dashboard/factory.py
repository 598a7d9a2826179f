"""Synthetic study directories (no training) for dashboard tests, written by the engine's own
writers: trials, folds and learning curves go through the search's recorder
(:class:`cytotune.engine.search.recorder.StudyRecorder`) as reports a trainable would send, so a
change of the store's format reaches these studies (or breaks them) instead of leaving a copy.

``make_study`` writes study.yaml/json, the tables and, optionally, an ``explain/`` directory laid
out exactly as :mod:`cytotune.explainers.job.layout` documents, with real overlay PNGs drawn by
:func:`cytotune.explainers.overlay` from the dataset crops.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from cytotune.engine.search import tables
from cytotune.engine.search.recorder import StudyRecorder
from cytotune.engine.search.store import StudyStore
from cytotune.explainers.job import layout
from PIL import Image

from tests.maps import encode_map

FAMILIES = ("small_cnn", "backbone", "mhl_attention")
CLASSES = ("metastasizing", "normal")
METRICS = ("balanced_accuracy", "accuracy", "f1_macro", "f1_weighted", "auc_macro", "log_loss")


def make_dataset(path: Path, n: int = 64, size: int = 24) -> Path:
    from cytotune.engine.synth import write_dataset

    if not (path / "manifest.json").is_file():
        write_dataset("metastasis", path, n=n, size=size, seed=0, progress=False)
    return path


def _params(family: str, rng) -> dict:
    own = {
        "small_cnn": {
            "conv_layers": int(rng.integers(2, 5)),
            "filters": int(rng.choice([8, 16, 32])),
            "dropout": round(float(rng.uniform(0, 0.4)), 1),
        },
        "backbone": {"backbone": "resnet10t", "dropout": round(float(rng.uniform(0, 0.3)), 1)},
        "mhl_attention": {
            "heads": int(rng.choice([1, 2])),
            "embed_dim": int(rng.choice([16, 32])),
            "dropout": round(float(rng.uniform(0, 0.4)), 1),
        },
    }[family]
    return {
        "family": family,
        family: own,
        "train": {"lr": float(10 ** rng.uniform(-3, -2)), "batch_size": int(rng.choice([32, 64]))},
    }


def _report(per_fold: list[dict], epoch: int, epochs: int, images_per_s: float) -> dict:
    """What a trainable reports after ``epoch`` (race: epochs): fold means and stds of every
    metric, each fold's curve values and the throughput; the last epoch's are the final ones."""
    share = 1.0 if epoch == epochs else 0.7 + 0.3 * epoch / 4
    report = {"epoch": epoch, "train_loss": 1.0 / epoch, "images_per_s": images_per_s}
    for m in METRICS:
        values = [r[m] * (share if m == "balanced_accuracy" else 1.0) for r in per_fold]
        report[f"val/{m}"], report[f"val/{m}_std"] = (
            float(np.mean(values)),
            float(np.std(values, ddof=1)),
        )
    report["val/well/balanced_accuracy"] = report["val/balanced_accuracy"]
    report["val/well/balanced_accuracy_std"] = 0.01
    for f, r in enumerate(per_fold):
        report[f"fold{f}/train_loss"] = 1.0 / epoch
        report[f"fold{f}/val_loss"] = 1.1 / epoch
        report[f"fold{f}/balanced_accuracy"] = r["balanced_accuracy"] * share
    return report


def make_study(
    root: Path,
    name: str = "alpha",
    n_trials: int = 12,
    k: int = 3,
    dataset: Path | None = None,
    explain: bool = True,
    seed: int = 0,
    status: str = "finished",
) -> Path:
    """A study directory at ``root/name`` and its (small) dataset; returns the study path."""
    rng = np.random.default_rng(seed)
    study = root / name
    study.mkdir(parents=True, exist_ok=True)
    config = {
        "name": name,
        "dataset": str(dataset) if dataset else str(root / "dataset"),
        "folds": {"name": f"k{k}-well", "k": k, "group": "well"},
        "space": ["demo"],
        "budget": {"trials": n_trials, "max_epochs": 4, "grace_epochs": 1},
        "objectives": [{"metric": "balanced_accuracy", "mode": "max"}],
        "storage": str(root),
    }
    (study / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (study / "study.json").write_text(
        json.dumps(
            {"status": status, "created": time.time(), "name": name, "dataset": config["dataset"]}
        )
    )
    store = StudyStore(str(study))
    recorder = StudyRecorder(store, k=k, max_epochs=4, race="epochs", flush_every_s=float("inf"))
    quality = {"small_cnn": 0.78, "backbone": 0.70, "mhl_attention": 0.9}
    n_val = [30] * k
    for i in range(n_trials):
        family = FAMILIES[i % len(FAMILIES)]
        tid = f"t{i:05d}"
        params = _params(family, rng)
        pruned = i % 4 == 3
        epochs_done = 1 if pruned else 4
        level = quality[family] - (0.2 if pruned else 0.0) + rng.normal(0, 0.03)
        per_fold = []
        for _ in range(k):
            b = float(np.clip(level + rng.normal(0, 0.02), 0.3, 0.999))
            row = {
                m: float(np.clip(b + rng.normal(0, 0.01), 0, 1)) for m in METRICS if m != "log_loss"
            }
            row["balanced_accuracy"] = b
            row["log_loss"] = float(1.2 - b)
            tp = int(round(15 * b))
            row["confusion_matrix"] = [[tp, 15 - tp], [15 - tp, tp]]
            fpr = np.linspace(0, 1, 11)
            tpr = np.clip(fpr ** (1 - b), 0, 1)
            row["roc"] = {
                c: {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": row["auc_macro"]}
                for c in CLASSES
            }
            per_fold.append(row)
        images_per_s = float(rng.uniform(500, 3000))
        recorder.started(tid, params)
        for e in range(1, epochs_done + 1):
            recorder.reported(tid, _report(per_fold, e, epochs_done, images_per_s))
        details = [
            {"fold": f, "epoch": epochs_done, "n_val": n_val[f], "n": n_val[f], **per_fold[f]}
            for f in range(k)
        ]
        checkpoint = study / "tune" / f"trial_{tid}" / "checkpoint_000003"
        recorder.completed(tid, checkpoint=str(checkpoint), fold_details=details)
    trials = store.table("trials")
    if explain:
        top = (
            trials.sort_values("val/balanced_accuracy", ascending=False)["trial_id"]
            .head(2)
            .tolist()
        )
        make_explain(study, Path(config["dataset"]), top, rng)
    return study


def make_trials_table(path: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """A trials.parquet of ``n`` trials (for load tests), written whole by the store's table
    writer rather than one report at a time."""
    rng = np.random.default_rng(seed)
    family = np.array(FAMILIES)[np.arange(n) % len(FAMILIES)]
    status = np.where(rng.random(n) < 0.6, "pruned", "completed")
    frame = {
        "trial_id": [f"x{i:06d}" for i in range(n)],
        "number": np.arange(n),
        "status": status,
        "family": family,
        "epochs_done": np.where(status == "pruned", 1, 20),
        "images_per_s": rng.uniform(500, 5000, n),
    }
    lr = 10 ** rng.uniform(-4, -2, n)
    frame["params"] = [
        json.dumps({"family": f, f: {"dropout": 0.1}, "train": {"lr": float(x)}})
        for f, x in zip(family, lr)
    ]
    frame["param.train.lr"] = lr
    for m in METRICS + tuple(f"well/{m}" for m in METRICS):
        frame[f"val/{m}"] = rng.uniform(0.4, 0.99, n)
        frame[f"val/{m}_std"] = rng.uniform(0.0, 0.05, n)
    frame["checkpoint"] = [f"/nowhere/{i}" for i in range(n)]
    table = pd.DataFrame(frame)
    StudyStore(str(path)).write_bytes("trials.parquet", tables.write_table("trials", table))
    return table


def _png(rgb: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def make_explain(study: Path, dataset: Path, trial_ids: list[str], rng) -> None:
    """An explain/ directory for ``trial_ids`` following explainers.job.layout exactly."""
    from cytotune.engine.data.dataset import CellDataset
    from cytotune.explainers import overlay

    ds = CellDataset(dataset)
    meta = ds.metadata()
    n = min(len(meta), 40)
    images = ds.images(np.arange(n)).astype(np.float32)  # (N, C, H, W)
    names = ds.manifest.channel_names
    c, h, w = images.shape[1:]
    yy, xx = np.mgrid[0:h, 0:w]
    label_names = meta["label"].astype(str).tolist()[:n]
    overlays, population, quality, prototypes, attention = [], [], [], [], []
    for tid in trial_ids:
        for method, channels in (("gradcam", 1), ("saliency", c)):
            rows = []
            for i in range(n):
                cy, cx = rng.uniform(h * 0.3, h * 0.7), rng.uniform(w * 0.3, w * 0.7)
                blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (h / 6) ** 2))
                amap = np.stack(
                    [blob * (j + 1) / channels for j in range(channels)]
                )  # (channels, H, W)
                data, shape = encode_map(amap)
                label = label_names[i]
                correct = bool(rng.random() < 0.75)
                prediction = label if correct else next(x for x in CLASSES if x != label)
                rows.append(
                    {
                        "cell_id": str(meta["cell_id"].iloc[i]),
                        "trial_id": tid,
                        "method": method,
                        "fold": i % 3,
                        "label": label,
                        "label_index": CLASSES.index(label),
                        "prediction": prediction,
                        "prediction_index": CLASSES.index(prediction),
                        "confidence": float(rng.uniform(0.5, 1.0)),
                        "correct": correct,
                        "target_index": CLASSES.index(prediction),
                        "true_value": np.nan,
                        "predicted_value": np.nan,
                        "abs_error": np.nan,
                        "map": data,
                        "map_shape": shape,
                        "mass_cell": float(rng.uniform(0.4, 0.9)),
                        "mass_evidence": float(rng.uniform(0.2, 0.8)),
                        "pointing_hit": float(rng.random() < 0.7),
                    }
                )
                if i < 6:
                    target = layout.overlay_path(study, tid, method, rows[-1]["cell_id"])
                    _png(overlay(images[i], amap.sum(0), channel_names=names), target)
                    overlays.append(
                        {
                            "trial_id": tid,
                            "method": method,
                            "cell_id": rows[-1]["cell_id"],
                            "path": target.relative_to(study).as_posix(),
                            "label": label,
                            "prediction": prediction,
                            "correct": correct,
                        }
                    )
            layout.write_maps(pd.DataFrame(rows), layout.maps_path(study, tid, method))
            for cls in CLASSES:
                folder = layout.population_dir(study, tid, method, cls)
                mean_image = images[[i for i in range(n) if label_names[i] == cls]].mean(0)
                gmean = np.exp(-((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (2 * (h / 5) ** 2))
                corr = np.tanh(rng.normal(0, 0.8, size=(c + 1, h, w)))  # (C + 1, H, W)
                for key, array, rgb in (
                    ("gmean_image", mean_image, overlay(mean_image, None, channel_names=names)),
                    (
                        "gmean_map",
                        gmean,
                        overlay(mean_image, gmean, channel_names=names, alpha=0.7),
                    ),
                    ("correlation", corr, overlay(corr[:1], None)),
                ):
                    folder.mkdir(parents=True, exist_ok=True)
                    np.save(folder / f"{key}.npy", array)
                    _png(rgb, folder / f"{key}.png")
                for channel in names:
                    files = {
                        k: (folder / f"{k}.png").relative_to(study).as_posix()
                        for k in ("gmean_image", "gmean_map", "correlation")
                    }
                    population.append(
                        {
                            "trial_id": tid,
                            "method": method,
                            "class": cls,
                            "channel": channel,
                            "n": 20,
                            "positive_ratio": 0.7,
                            "negative_ratio": 0.05,
                            "mean_r": 0.3,
                            **files,
                        }
                    )
            for metric in ("pointing_game", "mass_evidence", "deletion_auc", "insertion_auc"):
                quality.append(
                    {
                        "trial_id": tid,
                        "method": method,
                        "metric": metric,
                        "mean": float(rng.uniform(0.3, 0.9)),
                        "std": 0.05,
                        "n": n,
                    }
                )
            # the sanity check: the first listed trial's Grad-CAM fails, everything else passes
            failed = tid == sorted(trial_ids)[0] and method == "gradcam"
            rho = 0.81 if failed else 0.12
            for metric, value in (
                ("mass_cell", 0.6 if failed else 0.8),
                ("sanity_rho", rho),
                ("sanity_rho_low", rho - 0.06),
                ("sanity_rho_high", rho + 0.06),
                ("sanity_threshold", 0.66),
                ("sanity_verdict", 0.0 if failed else 1.0),
                ("randomisation_passed", 0.0 if failed else 1.0),
            ):
                quality.append(
                    {
                        "trial_id": tid,
                        "method": method,
                        "metric": metric,
                        "mean": value,
                        "std": 0.0,
                        "n": n,
                    }
                )
        for j in range(3):
            target = layout.prototype_path(study, tid, 0, j)
            mosaic = np.concatenate(
                [overlay(images[k], None, channel_names=names) for k in range(j, j + 4)], axis=1
            )
            _png(mosaic, target)
            prototypes.append(
                {
                    "trial_id": tid,
                    "fold": 0,
                    "prototype": j,
                    "class": j % 2,  # the prototype's class index, as the explain job writes it
                    "path": target.relative_to(study).as_posix(),
                    "duplicate_of": -1,
                }
            )
        target = layout.attention_path(study, tid, str(meta["cell_id"].iloc[0]))
        blob = np.exp(-((yy - h / 3) ** 2 + (xx - w / 2) ** 2) / (2 * (h / 6) ** 2))
        pair = [overlay(images[0], blob, channels=[k], channel_names=names) for k in range(2)]
        _png(np.concatenate(pair, axis=1), target)
        attention.append(
            {
                "trial_id": tid,
                "cell_id": str(meta["cell_id"].iloc[0]),
                "path": target.relative_to(study).as_posix(),
                "pairs": ["dna-actin"],
            }
        )
    root = layout.explain_dir(study)
    for name, rows in (
        ("overlays", overlays),
        ("population", population),
        ("quality", quality),
        ("prototypes", prototypes),
        ("attention", attention),
    ):
        layout.write_frame(pd.DataFrame(rows), root / f"{name}.parquet")  # typed, versioned
    failures = {f"maps/{sorted(trial_ids)[0]}/occlusion": "RuntimeError: out of memory in the test"}
    (root / layout.STATE_FILE).write_text(
        json.dumps({"status": "finished", "trials": trial_ids, "failures": failures})
    )
    layer = {"layers": ["blocks.1"], "sizes": {"blocks.1": [6, 6]}, "requested": False,
             "usable": {"blocks.0": [12, 12], "blocks.1": [6, 6]},
             "all": {"blocks.0": [12, 12], "blocks.1": [6, 6], "blocks.2": [3, 3]}}  # fmt: skip
    (root / "layers.json").write_text(json.dumps({t: {"gradcam": layer} for t in trial_ids}))


def png_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def make_regression_study(
    root: Path, name: str = "histo", n_trials: int = 6, k: int = 3, size: int = 16
) -> Path:
    """A regression study (R^2 / MAE per target) whose dataset is not reachable, with maps."""
    rng = np.random.default_rng(3)
    study = root / name
    study.mkdir(parents=True, exist_ok=True)
    config = {
        "name": name,
        "dataset": str(root / "missing-dataset"),
        "objectives": [{"metric": "r2", "mode": "max"}],
    }
    (study / "study.yaml").write_text(yaml.safe_dump(config))
    (study / "study.json").write_text(
        json.dumps({"status": "finished", "dataset": config["dataset"]})
    )
    store = StudyStore(str(study))
    recorder = StudyRecorder(store, k=k, max_epochs=3, flush_every_s=float("inf"))
    for i in range(n_trials):
        tid = f"r{i:04d}"
        per = [
            {"r2": float(rng.uniform(0.3, 0.8)), "mae": float(rng.uniform(0.05, 0.2))}
            for _ in range(k)
        ]
        details = [
            {"fold": f, "n_val": 20, "r2/tumour": row["r2"], "mae/tumour": row["mae"], **row}
            for f, row in enumerate(per)
        ]
        report = {"epoch": 3}
        for m in ("r2", "mae", "r2/tumour", "mae/tumour"):
            values = [r[m.split("/")[0]] for r in per]
            report[f"val/{m}"], report[f"val/{m}_std"] = (
                float(np.mean(values)),
                float(np.std(values, ddof=1)),
            )
        params = {"family": "small_cnn", "small_cnn": {"filters": 16}, "train": {"lr": 0.001}}
        recorder.started(tid, params)
        recorder.reported(tid, report)
        recorder.completed(tid, checkpoint=str(study / "tune" / tid), fold_details=details)
    yy, xx = np.mgrid[0:size, 0:size]
    rows = []
    for j in range(10):
        data, shape = encode_map(np.exp(-((yy - j) ** 2 + (xx - 8) ** 2) / 20.0))
        true, pred = float(rng.uniform(0, 1)), float(rng.uniform(0, 1))
        rows.append(
            {"cell_id": f"patch-{j}", "trial_id": "r0000", "method": "gradcam", "fold": j % k, "label": "", "label_index": -1,
             "prediction": f"{pred:.3f}", "prediction_index": -1, "confidence": np.nan, "correct": False, "target_index": 0,
             "true_value": true, "predicted_value": pred, "abs_error": abs(true - pred), "map": data, "map_shape": shape,
             "mass_cell": np.nan, "mass_evidence": np.nan, "pointing_hit": np.nan}
        )  # fmt: skip
    layout.write_maps(pd.DataFrame(rows), layout.maps_path(study, "r0000", "gradcam"))
    return study
