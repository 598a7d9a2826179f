"""Task of a dataset, model/dataset compatibility and the validation predictions of a fold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cytotune.search_spaces import ModelConfig, TaskSpec


def task_spec(manifest) -> TaskSpec:
    """The model task for a dataset: binary / multiclass over its classes, or its targets."""
    if manifest.task == "regression":
        return TaskSpec("regression", len(manifest.targets), tuple(manifest.targets))
    classes = tuple(manifest.classes)
    return TaskSpec("binary" if len(classes) == 2 else "multiclass", len(classes), classes)


def check_compatible(config: ModelConfig, manifest) -> None:
    """Raise ValueError when the model's channels or outputs do not fit the dataset."""
    if config.in_chans != manifest.num_channels:
        raise ValueError(
            f"model in_chans={config.in_chans} but dataset {manifest.name!r} has "
            f"{manifest.num_channels} channels {manifest.channel_names}; "
            f"build the ModelConfig with in_chans={manifest.num_channels}"
        )
    want = task_spec(manifest)
    if config.task.is_classification != want.is_classification or (
        config.task.num_outputs != want.num_outputs
    ):
        raise ValueError(
            f"model task {config.task.kind} with {config.task.num_outputs} outputs does not fit "
            f"the {manifest.task} dataset {manifest.name!r} ({want.num_outputs} "
            f"{'classes' if want.is_classification else 'targets'}: {list(want.target_names)}); "
            f"use task={want.kind!r}, num_outputs={want.num_outputs} (see engine.train.task_spec)"
        )


@dataclass
class FoldEvaluation:
    """Predictions on the validation split, in loader order.

    Attributes:
        cell_ids: (N,) cell ids.
        targets: (N,) int64 class indices or (N, T) float32 targets.
        outputs: (N, K) softmax probabilities or (N, T) predictions, float32.
        loss: mean unweighted task loss (cross-entropy or MSE).
        task: "classification" or "regression".
        names: class names (by index) or target names.
    """

    cell_ids: np.ndarray
    targets: np.ndarray
    outputs: np.ndarray
    loss: float
    task: str
    names: tuple[str, ...]

    def metrics(self, manifest=None) -> dict:
        """``cytotune.engine.metrics`` of these predictions (names from ``manifest`` when given)."""
        from cytotune.engine.metrics import classification_metrics, regression_metrics

        names = self.names
        if manifest is not None:
            names = tuple(task_spec(manifest).target_names)
        if self.task == "regression":
            return regression_metrics(self.targets, self.outputs, names)
        return classification_metrics(self.targets, self.outputs, names)
