"""The Ray Tune trainable: one trial = one configuration on every fold, reported each epoch.

Follows Tune's function-API examples: ``tune.get_checkpoint()`` to resume (after a retry or a
driver restart), ``tune.report(metrics, checkpoint=...)`` once per epoch with the fold-mean
validation metrics ASHA prunes on, and a checkpoint directory holding every fold model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .crossval import CrossValidation
from .study import StudyConfig

# Test hook: fail a trial once at this epoch (the marker file records that it happened).
FAIL_AT_EPOCH = "CYTOTUNE_FAIL_ONCE_AT_EPOCH"
FAIL_MARKER = "CYTOTUNE_FAIL_MARKER"


def _maybe_fail(epoch: int) -> None:
    target, marker = os.environ.get(FAIL_AT_EPOCH), os.environ.get(FAIL_MARKER)
    if target is not None and marker and int(target) == epoch and not Path(marker).exists():
        Path(marker).write_text(str(epoch))
        raise RuntimeError(f"injected failure at epoch {epoch} ({FAIL_AT_EPOCH})")


def pick_device(gpus: float) -> str:
    import torch

    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"


def run_trial(config: dict, study: StudyConfig) -> None:
    """Tune function trainable; ``config`` is the nested search sample."""
    from ray import tune

    cv = CrossValidation(study, config, device=pick_device(study.resources.gpus))
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            cv.restore(directory)
    while cv.epoch < study.budget.max_epochs:
        report, details = cv.run_epoch()
        _maybe_fail(cv.epoch)
        last = cv.epoch == study.budget.max_epochs
        if last or cv.epoch % study.checkpoint_every == 0:
            with tempfile.TemporaryDirectory() as directory:
                cv.save(directory, details)
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            tune.report(report)
