"""From a trial to a bundle: pick the members (one fold, all folds, or a full-data retrain),
wrap them with the normalisation, export, check and write.

>>> from cytotune.engine.export.source import select_trial
>>> from cytotune.engine.export.pull import pull
>>> pull(select_trial("runs/studies/demo", rank=1), "bundles/demo", ensemble="folds",
...      formats=["state_dict", "torchscript", "onnx"])
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cytotune.engine.train.checkpoint import (
    load_fold,
    model_config_of,
    model_extra_state,
    read_config,
)
from cytotune.engine.train.contract import DataContract

from .bundle import write_bundle
from .card import model_card
from .ensemble import BundleModel, uses_mask
from .source import TrialSource, cv_metrics, provenance

ENSEMBLES = ("folds",)
SAMPLE_CROPS = 8


def best_fold(metrics: dict, k: int) -> int:
    """The fold whose validation split scored best on the study objective (0 when unknown)."""
    metric, mode = metrics["objective"]["metric"], metrics["objective"]["mode"]
    scored = [
        (row[metric], int(row["fold"]))
        for row in metrics["folds"]
        if row.get(metric) is not None and 0 <= int(row.get("fold", -1)) < k
    ]
    if not scored:
        return 0
    return (max if mode == "max" else min)(scored)[1]


def retrain_full(
    fold_dir: Path,
    dataset_path: str | Path,
    device: str = "cpu",
    epochs: int | None = None,
    log: Callable[[str], None] = print,
) -> tuple[torch.nn.Module, dict]:
    """Retrain a checkpoint's configuration on every cell of the dataset (no Ray).

    The trainer needs a non-empty validation split; it gets a few training cells, which are
    never evaluated (there is no held-out data left: the CV metrics are the estimate).

    Returns:
        ``(model in eval mode, record)`` with the epochs, cells and final training loss.
    """
    from cytotune.engine.data import CellDataset
    from cytotune.engine.train import FoldTrainer, TrainConfig
    from cytotune.engine.train.checkpoint import check_contract

    config = read_config(fold_dir)
    dataset = CellDataset(dataset_path)
    check_contract(config["data"], dataset.manifest, fold_dir)
    train_config = TrainConfig.from_dict(config["train"]).replace(loader="inprocess")
    if epochs is not None:
        warmup = min(train_config.warmup_epochs, epochs)
        train_config = train_config.replace(epochs=epochs, warmup_epochs=warmup)
    ids = dataset.metadata()["cell_id"].to_numpy()
    trainer = FoldTrainer(
        model_config_of(config), train_config, dataset, ids, ids[:32], device=device, fold=0
    )
    for epoch in range(train_config.epochs):
        stats = trainer.train_epoch(epoch)
        log(f"  retrain epoch {epoch + 1}/{train_config.epochs}: loss {stats['loss']:.4f}")
    record = {
        "cells": len(ids),
        "epochs": train_config.epochs,
        "final_train_loss": trainer.history[-1]["loss"],
        "train": train_config.to_dict(),
        "device": str(device),
    }
    return trainer.model.float().cpu().eval(), record


def sample_crops(
    study: dict, data: dict, with_mask: bool, n: int = SAMPLE_CROPS
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Raw crops to check the exports on: the study's dataset when it is there and unchanged,
    else pixels drawn from the contract's channel statistics."""
    from cytotune.engine.data import CellDataset

    path = study.get("dataset")
    try:
        dataset = CellDataset(path)
        if dataset.manifest.content_hash != data["content_hash"]:
            raise ValueError("dataset changed")
        rows = np.linspace(0, len(dataset) - 1, min(n, len(dataset))).astype(int)
        pixels = dataset.images(rows).astype(np.float32)
        mask = None
        if with_mask:
            mask = dataset.masks()[rows][:, None].astype(np.float32)
        return pixels, mask, f"dataset {path} rows {rows.tolist()}"
    except (FileNotFoundError, ValueError, TypeError):
        contract = DataContract.from_dict(data)
        stats = contract.normalization.stats
        rng = np.random.default_rng(0)
        c, h, w = contract.shape
        mean, std = np.asarray(stats["mean"]), np.asarray(stats["std"])
        pixels = rng.normal(mean[:, None, None], std[:, None, None], (n, c, h, w))
        pixels = np.clip(pixels, np.asarray(stats["min"])[:, None, None], None).astype(np.float32)
        mask = np.ones((n, 1, h, w), np.float32) if with_mask else None
        return pixels, mask, "synthetic crops from the contract's channel statistics"


def pull(
    source: TrialSource,
    out: str | Path,
    *,
    ensemble: str | None = None,
    fold: int | None = None,
    formats: list[str] = ("state_dict", "torchscript"),
    retrain: bool = False,
    dataset: str | Path | None = None,
    device: str = "cpu",
    epochs: int | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    tta: str = "trial",
) -> tuple[Path, dict]:
    """Write the bundle of ``source`` to ``out``.

    Args:
        source: the selected trial (:func:`cytotune.engine.export.source.select_trial`).
        out: bundle directory.
        ensemble: "folds" packs the K fold models as one model averaging their outputs.
        fold: the fold model to bundle (default: the fold that scored best on the objective).
        formats: weight formats (``state_dict`` is always written).
        retrain: retrain the configuration on all cells first (one model, no held-out data).
        dataset: the dataset to retrain on (default: the study's).
        device: torch device for retraining.
        epochs: retraining epochs (default: the trial's training schedule).
        overwrite: replace an existing bundle directory.
        tta: test-time averaging inside the bundle's model: "trial" (as the trial's validation
            scores were taken, its ``train.tta``), "dihedral", "flips" or "none".
    """
    if ensemble is not None and ensemble not in ENSEMBLES:
        raise ValueError(f"--ensemble {ensemble!r} is not one of {ENSEMBLES}")
    if retrain and (ensemble or fold is not None):
        raise ValueError("--retrain-full makes one model from all cells; drop --ensemble/--fold")
    if ensemble and fold is not None:
        raise ValueError("--ensemble folds packs every fold; drop --fold")
    fold_dirs = source.fold_dirs()
    configs = [read_config(d) for d in fold_dirs]
    data = configs[0]["data"]
    for d, c in zip(fold_dirs, configs):
        if c["data"]["content_hash"] != data["content_hash"] or c["model"] != configs[0]["model"]:
            raise ValueError(f"{d} was trained on other data or another model than {fold_dirs[0]}")
    metrics = cv_metrics(source)
    extra: dict[str, Any] = {}
    if retrain:
        path = dataset or source.study.get("dataset")
        log(f"retraining trial {source.trial_id} on every cell of {path} ({device})")
        model, record = retrain_full(fold_dirs[0], path, device, epochs, log)
        members, kind = [model], "retrained"
        member_docs = [{"name": "full", "fold": None, "model_extra": model_extra_state(model)}]
        extra["retrain"] = record
    else:
        chosen = list(range(len(fold_dirs))) if ensemble else [fold]
        if not ensemble:
            chosen = [best_fold(metrics, len(fold_dirs)) if fold is None else fold]
            if not 0 <= chosen[0] < len(fold_dirs):
                raise ValueError(
                    f"--fold {fold} out of range: the trial has {len(fold_dirs)} folds"
                )
        members, member_docs = [], []
        for k in chosen:
            loaded = load_fold(fold_dirs[k])
            members.append(loaded.model)
            member_docs.append(
                {
                    "name": f"fold_{k}",
                    "fold": k,
                    "epoch": loaded.config.get("epoch"),
                    "model_extra": loaded.config.get("model_extra", {}),
                }
            )
        kind = "ensemble" if ensemble else "single"
        if not ensemble:
            extra["fold_choice"] = (
                "given by --fold" if fold is not None else "best validation objective of the folds"
            )
    contract = DataContract.from_dict(data, f"checkpoint {fold_dirs[0]}")
    with_mask = uses_mask(members[0]) and contract.has_mask
    norm = contract.normalization
    tta = configs[0]["train"].get("tta", "none") if tta == "trial" else tta
    square = contract.shape[-1] == contract.shape[-2]
    model = BundleModel(
        members, norm.offset, norm.scale, contract.is_classification, with_mask, tta, square
    )
    output_names = contract.output_names
    model_config = model_config_of(configs[0])
    config = {
        "family": model_config.family,
        "kind": kind,
        "ensemble": ensemble,
        "model": model_config.to_dict(),
        "train": configs[0]["train"],
        "members": member_docs,
        "output": model.output_name,
        "output_names": output_names,
        "mask_input": with_mask,
        "tta": model.tta,
    }
    if "fold_choice" in extra:
        config["fold_choice"] = extra.pop("fold_choice")
    pixels, mask, sample_from = sample_crops(source.study, data, with_mask)
    prov = provenance(source, data, list(formats), sample=sample_from, **extra)
    log(
        f"bundling trial {source.trial_id} ({config['family']}, {kind}, "
        f"{len(members)} member{'s' * (len(members) > 1)}) as {', '.join(formats)}"
    )
    return write_bundle(
        out,
        model,
        config=config,
        data=data,
        metrics=metrics,
        provenance=prov,
        formats=list(formats),
        sample=pixels,
        sample_mask=mask,
        card=lambda manifest: model_card(manifest, config, data, metrics, prov, source),
        overwrite=overwrite,
    )
