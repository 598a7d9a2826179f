"""One configuration evaluated on the study's frozen folds, epoch by epoch, with or without Ray.

``CrossValidation`` holds one ``FoldTrainer`` per fold and runs them in one of two orders
(``budget.race``):

- "folds" (default): fold by fold, each trained to the end; after each fold it reports the mean
  over the folds done so far, so ASHA races configurations over folds (a configuration that
  loses on its first folds never pays for the others; rungs compare trials on the same folds).
- "epochs": all folds in lockstep, one report per epoch (ASHA races over epochs).

The Ray Tune trainable is a thin loop around it; the same class retrains a chosen configuration
without Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from cytotune.engine.data import CellDataset
from cytotune.engine.data.folds import load_folds
from cytotune.engine.metrics import (
    classification_metrics,
    group_metrics,
    mean_std,
    regression_metrics,
    scalar_metrics,
)

from .study import StudyConfig

if TYPE_CHECKING:
    from cytotune.engine.train import FoldTrainer

# Objectives that weigh classes equally: with them ``class_weighting: auto`` means "balanced".
# Validation points per fold's learning curve under race: folds (each costs an evaluation).
CURVE_POINTS = 8
BALANCED_OBJECTIVES = {"balanced_accuracy", "f1_macro", "precision_macro", "recall_macro"}


def _link_tree(source: Path, target: Path) -> None:
    """``target`` as hard links to the files of ``source`` (copies across file systems)."""
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copy2(path, target / path.name)


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
        from cytotune.engine.train import TrainConfig
        from cytotune.search_spaces import ModelConfig

        self.study = study
        # the folds' in-process loaders decode the shards once between them
        self.dataset = CellDataset(study.dataset, keep_decoded=study.effective_loader == "inprocess")
        self.manifest = self.dataset.manifest
        self.folds = load_folds(self.dataset.path, study.folds.resolved_name)
        kind, outputs, self.names = task_of(self.manifest)
        self.model_config = ModelConfig.from_sample(
            sample, in_chans=self.manifest.num_channels, task=kind, num_outputs=outputs
        )
        overrides = {"epochs": study.budget.max_epochs, "seed": study.seed, **study.train}
        overrides["loader"] = study.effective_loader
        train_config = TrainConfig.from_sample(sample.get("train", {}), **overrides)
        if train_config.class_weighting == "auto":
            balanced = study.objectives[0].metric in BALANCED_OBJECTIVES
            train_config = train_config.replace(class_weighting="balanced" if balanced else "none")
        self.train_config, self.device = train_config, device
        self.race = study.budget.race
        # fold order builds each fold's trainer when its turn comes (one fold's data and
        # optimiser state at a time are new; finished folds keep only their model)
        self.trainers = (
            [] if self.race == "folds" else [self._trainer(k) for k in range(self.folds.k)]
        )
        self.fold_details: list[dict] = []  # final metrics of the folds done (fold order)
        # every report so far, kept in each checkpoint: a driver killed before it stored them
        # loses none, since the resumed trial goes on after its checkpoint
        self.reports: list[dict] = []
        self._trained: dict[int, dict] = {}  # folds trained together, not reported yet
        self._scratch = tempfile.TemporaryDirectory(prefix="cytotune-folds-")
        self._written: dict[int, Path] = {}  # finished folds already serialised in _scratch
        self.timing: dict[str, float] = {}  # wall seconds per phase: build, train, evaluate, ...
        self.groups = None
        if study.well_column:
            meta = self.dataset.metadata()
            if study.well_column not in meta.columns:
                raise ValueError(
                    f"well_column {study.well_column!r} is not a column of {self.dataset.path}"
                )
            self.groups = dict(zip(meta["cell_id"], meta[study.well_column].astype(str)))
        self.epoch = 0  # epochs completed

    def _trainer(self, k: int):
        from cytotune.engine.train import FoldTrainer

        return FoldTrainer(
            self.model_config,
            self.train_config,
            self.dataset,
            *self.folds.split(k),
            device=self.device,
            fold=k,
        )

    @property
    def folds_done(self) -> int:
        return len(self.fold_details)

    def _fold_metrics(self, evaluation, detail: bool = True) -> dict:
        """All metrics of a fold's predictions; ``detail=False`` (learning-curve points) skips
        AUCs, ROC curves and the confusion matrix unless the objective is an AUC."""
        if self.manifest.task == "regression":
            metrics = regression_metrics(evaluation.targets, evaluation.outputs, self.names)
        else:
            detail = detail or self.study.objectives[0].metric.startswith("auc")
            metrics = classification_metrics(
                evaluation.targets, evaluation.outputs, self.names, detail=detail
            )
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
        report = self._summary(details)
        report.update(
            epoch=self.epoch,
            train_loss=float(np.mean(train_loss)),
            epoch_seconds=seconds,
            images_per_s=images / max(train_seconds, 1e-9),  # training throughput (no evaluation)
        )
        return report, details

    def parallel_folds(self, first: FoldTrainer) -> int:
        """How many folds train at once after the first (``budget.parallel_folds``)."""
        setting = self.study.budget.parallel_folds
        if setting != "auto":
            return setting
        on_gpu = first.device.type == "cuda" and self.train_config.loader == "inprocess"
        return self.folds.k - 1 if on_gpu else 1

    def _train_folds(self, ks: list[int]) -> dict[int, dict]:
        """Train folds ``ks`` to the end (together when several), with the learning-curve
        points before the last epoch; per fold its trainer, curve and training figures."""
        tick = time.perf_counter()
        trainers = [self._trainer(k) for k in ks]
        self.add_time("build", time.perf_counter() - tick)
        epochs = self.train_config.epochs
        every = max(1, round(epochs / CURVE_POINTS))
        curves: dict[int, list] = {k: [] for k in ks}

        def curve_point(trainer, stats: dict) -> None:
            epoch = stats["epoch"]
            if epoch == epochs or epoch % every:
                return  # the last epoch's point is the final, test-time averaged score
            tick = time.perf_counter()
            evaluation = trainer.evaluate(tta=False)
            point = {"epoch": epoch, "train_loss": float(stats["loss"])}
            point.update(
                scalar_metrics(self._fold_metrics(evaluation, detail=False)),
                val_loss=float(evaluation.loss),
            )
            curves[trainer.fold].append(point)
            self.add_time("evaluate", time.perf_counter() - tick)

        tick = time.perf_counter()
        if len(trainers) == 1:
            trainer = trainers[0]
            for epoch in range(trainer.epoch, epochs):
                curve_point(trainer, trainer.train_epoch(epoch))
        else:
            from cytotune.engine.train.parallel import train_concurrently

            train_concurrently(trainers, on_epoch=curve_point)
        share = (time.perf_counter() - tick) / len(trainers)  # folds together share the wall
        return {
            t.fold: {
                "trainer": t,
                "curve": curves[t.fold],
                "images": sum(r.get("images", 0) for r in t.history),
                "train_seconds": (
                    share if len(trainers) > 1 else sum(r.get("seconds", 0.0) for r in t.history)
                ),
                "wall": share,
            }
            for t in trainers
        }

    def run_fold(self) -> tuple[dict, list[dict]]:
        """Score the next fold, trained to the end (with test-time averaging); returns the
        report (means over the folds done so far, ``folds_done``, the fold's learning curve)
        and the final metrics of every fold done.

        The first fold trains alone; the ones after it train ``parallel_folds`` at a time,
        and each of those is then reported in turn, so ASHA still sees every rung."""
        k = self.folds_done
        start = time.perf_counter()
        if k not in self._trained:
            if k == 0 or not self.trainers:
                self._trained.update(self._train_folds([k]))
            else:
                n = self.parallel_folds(self.trainers[0])
                self._trained.update(self._train_folds(list(range(k, min(k + n, self.folds.k)))))
        fold = self._trained.pop(k)
        trainer = fold["trainer"]
        tick = time.perf_counter()
        evaluation = trainer.evaluate(tta=True)
        final = self._fold_metrics(evaluation, detail=True)
        self.add_time("evaluate", time.perf_counter() - tick)
        stats = trainer.history[-1]
        curve = fold["curve"] + [
            {
                "epoch": trainer.epoch,
                "train_loss": float(stats["loss"]),
                **scalar_metrics(final),
                "val_loss": float(evaluation.loss),
            }
        ]
        final.update(val_loss=float(evaluation.loss), train_loss=float(stats["loss"]))
        trainer.release_data()
        self.trainers.append(trainer)
        self.fold_details.append(
            {
                "fold": k,
                "epoch": self.train_config.epochs,
                "n_val": len(evaluation.cell_ids),
                **final,
            }
        )
        self.epoch = self.train_config.epochs
        seconds = fold["wall"] + time.perf_counter() - start
        report = self._summary(self.fold_details)
        report.update(
            epoch=self.epoch,
            folds_done=self.folds_done,
            fold=k,
            fold_curve=curve,
            train_loss=float(stats["loss"]),
            epoch_seconds=seconds / self.train_config.epochs,
            fold_seconds=seconds,
            images_per_s=fold["images"] / max(fold["train_seconds"], 1e-9),
        )
        self.add_time("train", fold["train_seconds"])
        report.update({f"time/{phase}_s": v for phase, v in self.timing.items()})
        return report, list(self.fold_details)

    def add_time(self, phase: str, seconds: float) -> None:
        """Accumulate wall seconds of a phase of this trial (reported as ``time/<phase>_s``)."""
        self.timing[phase] = self.timing.get(phase, 0.0) + seconds

    @staticmethod
    def _summary(details: list[dict]) -> dict:
        """``val/<metric>`` means (and ``_std``) over folds plus ``fold<k>/<metric>`` values."""
        per_fold = [
            {k: v for k, v in scalar_metrics(d).items() if k not in ("fold", "epoch")}
            for d in details
        ]
        report = {f"val/{k}": v for k, v in mean_std(per_fold).items()}
        for detail, scalars in zip(details, per_fold):
            report.update({f"fold{detail['fold']}/{k}": v for k, v in scalars.items()})
        return report

    @property
    def finished(self) -> bool:
        if self.race == "folds":
            return self.folds_done >= self.folds.k
        return self.epoch >= self.study.budget.max_epochs

    def step(self) -> tuple[dict, list[dict]]:
        """One unit of work of the study's race order: a whole fold, or an epoch of all folds."""
        report, details = self.run_fold() if self.race == "folds" else self.run_epoch()
        self.reports.append(report)
        return report, details

    def save(self, directory: str | Path, details: list[dict] | None = None) -> None:
        directory = Path(directory)
        for trainer in self.trainers:
            target = directory / f"fold_{trainer.fold}"
            if self.race != "folds":
                trainer.save(target)
                continue
            # a finished fold is written once (without optimiser state) and hard-linked into
            # every later checkpoint: reporting after fold k costs one fold, not k
            if trainer.fold not in self._written:
                self._written[trainer.fold] = trainer.save(
                    Path(self._scratch.name) / f"fold_{trainer.fold}", finished=True
                )
            _link_tree(self._written[trainer.fold], target)
        state = {
            "epoch": self.epoch,
            "folds": self.folds.name,
            "fold_hash": self.folds.hash,
            "race": self.race,
            "fold_details": self.fold_details,
            "reports": self.reports,
        }
        (directory / "cv.json").write_text(json.dumps(state, default=float))
        if details is not None:
            (directory / "metrics.json").write_text(json.dumps(details, default=float))

    def restore(self, directory: str | Path) -> None:
        from cytotune.engine.train import FoldTrainer

        directory = Path(directory)
        state = json.loads((directory / "cv.json").read_text())
        if state["fold_hash"] != self.folds.hash:
            raise ValueError(
                f"checkpoint {directory} was made on other folds ({state['folds']}); it cannot resume this study"
            )
        self.fold_details = list(state.get("fold_details") or [])
        self.reports = list(state.get("reports") or [])
        done = len(self.fold_details) if self.race == "folds" else self.folds.k
        self.trainers = [
            FoldTrainer.load(
                directory / f"fold_{k}",
                self.dataset,
                *self.folds.split(k),
                device=self.device,
                fold=k,
            )
            for k in range(done)
        ]
        if self.race == "folds":
            for trainer in self.trainers:
                trainer.release_data()
        self.epoch = state["epoch"]
