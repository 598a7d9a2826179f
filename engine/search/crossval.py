"""One configuration evaluated on the study's frozen folds, epoch by epoch, with or without Ray.

``CrossValidation`` holds one ``FoldTrainer`` per fold and advances them in lockstep, so every
epoch yields the fold-mean validation metrics that ASHA prunes on, the per-fold metrics, and a
checkpoint of all fold models. The Ray Tune trainable is a thin loop around it; the same class
retrains a chosen configuration without Ray.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from engine.data import CellDataset
from engine.data.folds import load_folds
from engine.metrics import (
    classification_metrics,
    group_metrics,
    mean_std,
    regression_metrics,
    scalar_metrics,
)

from .study import StudyConfig


def task_of(manifest) -> tuple[str, int, list[str]]:
    """(task kind, number of outputs, class or target names) from a dataset manifest."""
    if manifest.task == "regression":
        return "regression", len(manifest.targets), list(manifest.targets)
    classes = manifest.classes
    return ("binary" if len(classes) == 2 else "multiclass"), len(classes), classes


class CrossValidation:
    """K fold trainers for one sampled configuration.

    Args:
        study: the validated study.
        sample: the nested search sample ``{"family": f, f: {...}, "train": {...}}``.
        device: torch device string.
    """

    def __init__(self, study: StudyConfig, sample: dict, device: str = "cpu") -> None:
        from engine.train import FoldTrainer, TrainConfig
        from search_spaces import ModelConfig

        self.study = study
        self.dataset = CellDataset(study.dataset)
        self.manifest = self.dataset.manifest
        self.folds = load_folds(self.dataset.path, study.folds.resolved_name)
        kind, outputs, self.names = task_of(self.manifest)
        self.model_config = ModelConfig.from_sample(
            sample, in_chans=self.manifest.num_channels, task=kind, num_outputs=outputs
        )
        overrides = {"epochs": study.budget.max_epochs, "seed": study.seed, **study.train}
        overrides["loader"] = study.effective_loader
        self.train_config = TrainConfig.from_sample(sample.get("train", {}), **overrides)
        self.trainers = [
            FoldTrainer(
                self.model_config,
                self.train_config,
                self.dataset,
                *self.folds.split(k),
                device=device,
                fold=k,
            )
            for k in range(self.folds.k)
        ]
        self.groups = None
        if study.well_column:
            meta = self.dataset.metadata()
            if study.well_column not in meta.columns:
                raise ValueError(
                    f"well_column {study.well_column!r} is not a column of {self.dataset.path}"
                )
            self.groups = dict(zip(meta["cell_id"], meta[study.well_column].astype(str)))
        self.epoch = 0  # epochs completed

    def _fold_metrics(self, evaluation) -> dict:
        if self.manifest.task == "regression":
            metrics = regression_metrics(evaluation.targets, evaluation.outputs, self.names)
        else:
            metrics = classification_metrics(evaluation.targets, evaluation.outputs, self.names)
        if self.groups is not None:
            groups = np.array([self.groups[c] for c in evaluation.cell_ids])
            task = "regression" if self.manifest.task == "regression" else "classification"
            metrics.update(
                group_metrics(groups, evaluation.targets, evaluation.outputs, self.names, task)
            )
        return metrics

    def run_epoch(self) -> tuple[dict, list[dict]]:
        """Train every fold one epoch and evaluate; returns (report, per-fold details)."""
        start = time.perf_counter()
        details, images, train_loss, train_seconds = [], 0, [], 0.0
        for trainer in self.trainers:
            stats = trainer.train_epoch(self.epoch)
            evaluation = trainer.evaluate()
            metrics = self._fold_metrics(evaluation)
            metrics["val_loss"] = float(evaluation.loss)
            metrics["train_loss"] = float(stats["loss"])
            details.append(
                {
                    "fold": trainer.fold,
                    "epoch": self.epoch + 1,
                    "n_val": len(evaluation.cell_ids),
                    **metrics,
                }
            )
            images += stats.get("images", 0)
            train_seconds += stats.get("seconds", 0.0)
            train_loss.append(stats["loss"])
        self.epoch += 1
        seconds = time.perf_counter() - start
        per_fold = [
            {k: v for k, v in scalar_metrics(d).items() if k not in ("fold", "epoch")}
            for d in details
        ]
        report = {f"val/{k}": v for k, v in mean_std(per_fold).items()}
        for detail, scalars in zip(details, per_fold):
            report.update({f"fold{detail['fold']}/{k}": v for k, v in scalars.items()})
        report.update(
            epoch=self.epoch,
            train_loss=float(np.mean(train_loss)),
            epoch_seconds=seconds,
            images_per_s=images / max(train_seconds, 1e-9),  # training throughput (no evaluation)
        )
        return report, details

    def save(self, directory: str | Path, details: list[dict] | None = None) -> None:
        directory = Path(directory)
        for trainer in self.trainers:
            trainer.save(directory / f"fold_{trainer.fold}")
        state = {"epoch": self.epoch, "folds": self.folds.name, "fold_hash": self.folds.hash}
        (directory / "cv.json").write_text(json.dumps(state))
        if details is not None:
            (directory / "metrics.json").write_text(json.dumps(details, default=float))

    def restore(self, directory: str | Path) -> None:
        from engine.train import FoldTrainer

        directory = Path(directory)
        state = json.loads((directory / "cv.json").read_text())
        if state["fold_hash"] != self.folds.hash:
            raise ValueError(
                f"checkpoint {directory} was made on other folds ({state['folds']}); it cannot resume this study"
            )
        self.trainers = [
            FoldTrainer.load(
                directory / f"fold_{k}", self.dataset, *self.folds.split(k), device=t.device, fold=k
            )
            for k, t in enumerate(self.trainers)
        ]
        self.epoch = state["epoch"]
