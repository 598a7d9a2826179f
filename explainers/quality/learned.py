"""Did the explained model learn anything? The model verdict that the randomisation check lacks.

The randomisation check (:mod:`.sanity`) compares a model's maps with those of fully
re-initialised copies. An untrained model is itself such a copy, so its maps differ from the
copies' maps as much as a trained model's do and the check passes it (BENCHMARKS.md, "Sanity
check: calibration": balanced accuracy 0.50 on trained vs untrained models). Two scores do tell
them apart, and :func:`model_verdict` combines them per trial:

* **head-only randomisation** (``learned_head_rho``): the per-cell |Spearman rho| between the
  model's maps and the maps after only the classifier head is re-drawn (mean over random heads).
  A trained trunk's features are few and strong, so any head reads the same regions and the maps
  move little (|rho| 0.78-0.86 for trained small CNNs); an untrained trunk's features are many weak random filters, and a
  new head mixes them into a different map (0.33-0.38 untrained). |rho|, not rho: a new head may take
  the opposite sign for the target class, which flips a signed map without moving its evidence;
* **held-out balanced accuracy versus chance**: the explained cells are the fold models'
  validation cells, so their predictions say whether the model beats ``1 / classes`` (what a
  constant or random predictor scores, whatever the class balance); the 95% bootstrap interval
  must lie above it.

For a classifier explained on its validation cells the held-out accuracy decides (it is what
"learned" means, and it held on every calibration case); the head-only score decides only where
there is no such accuracy (regression, ``--split train``): calibrated on small CNNs, it put a
trained ResNet-10t of the demo study (balanced accuracy 0.96) at 0.52, below the small CNNs'
threshold. ``unknown`` when neither is known. HEAD_THRESHOLD comes from
``bench/sanity_calibration.py`` (trained vs untrained small CNNs on the synthetic tasks).
The explain job computes the head-only score only where it decides (:func:`held_out_decides`
is False; ``cytotune explain --head-check`` computes it everywhere): elsewhere its rows read
``learned_head_skipped`` and the verdict's reason says the check was not run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "HEAD_THRESHOLD",
    "MODEL_MEANINGS",
    "ModelVerdict",
    "balanced_accuracy",
    "balanced_accuracy_ci",
    "held_out_decides",
    "model_verdict",
]

# bench/sanity_calibration.py (BENCHMARKS.md, "Sanity check: the model verdict"): median over a
# model's methods of the mean head-only |rho|; untrained small CNNs scored 0.33-0.38, trained ones
# that learned the metastasis task 0.78-0.86 (balanced accuracy 1.00; per method 0.96 at 0.55).
# Trained models still at chance scored 0.78-0.97: the head score tells trained weights from
# random ones, the held-out accuracy tells whether they learned the task.
HEAD_THRESHOLD = 0.58

MODEL_MEANINGS = {
    "learned": "the model beats chance on its held-out cells and its maps come from learned features",
    "untrained": (
        "the model looks untrained: it does not beat chance on its held-out cells, or its maps "
        "change as soon as only the classifier head is re-drawn (they come from random features); "
        "no map of it shows learned evidence, whatever the per-method check says"
    ),
    "unknown": "the job recorded neither the head-only check nor the held-out predictions",
}


def balanced_accuracy(labels, predictions) -> float:
    """Mean recall over the classes present in ``labels`` (scikit-learn's definition)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ")
    if labels.size == 0:
        return float("nan")
    classes = np.unique(labels)
    return float(np.mean([(predictions[labels == c] == c).mean() for c in classes]))


def balanced_accuracy_ci(
    labels, predictions, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """``(balanced accuracy, low, high)``: percentile bootstrap over cells (NaNs when empty)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    value = balanced_accuracy(labels, predictions)
    if labels.size == 0:
        return value, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    correct = labels == predictions
    boots = []
    for chunk in np.array_split(np.arange(n_boot), max(1, n_boot * labels.size // 10_000_000)):
        idx = rng.integers(0, labels.size, size=(len(chunk), labels.size))
        lab, hit = labels[idx], correct[idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls = [
                ((lab == c) & hit).sum(1) / (lab == c).sum(1) for c in np.unique(labels)
            ]  # NaN where a resample drew no cell of the class (left out, as sklearn does)
        boots.append(np.nanmean(np.stack(recalls), axis=0))
    boots = np.concatenate(boots)
    alpha = (1 - level) / 2
    return value, float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))


def held_out_decides(accuracy_low: float, chance: float) -> bool:
    """Whether the held-out balanced accuracy decides the model verdict: its lower 95% bound
    and chance are known (a classifier explained on its validation cells). Otherwise the
    head-only score decides."""
    return bool(np.isfinite(accuracy_low) and np.isfinite(chance))


@dataclass(frozen=True)
class ModelVerdict:
    """Outcome of :func:`model_verdict`; ``reason`` names the score that decided it."""

    verdict: str
    reason: str
    head: float = float("nan")
    accuracy: float = float("nan")
    accuracy_low: float = float("nan")
    chance: float = float("nan")

    @property
    def meaning(self) -> str:
        return MODEL_MEANINGS[self.verdict]


def model_verdict(
    head_scores: Mapping[str, float] | None = None,
    accuracy: float = float("nan"),
    accuracy_low: float = float("nan"),
    chance: float = float("nan"),
    threshold: float = HEAD_THRESHOLD,
    head_skipped: bool = False,
) -> ModelVerdict:
    """One trial's model verdict.

    Args:
        head_scores: method -> mean head-only |rho| (``learned_head_rho``); their median is
            compared with ``threshold`` when there is no held-out accuracy.
        accuracy: held-out balanced accuracy; ``accuracy_low`` its lower 95% bound.
        chance: the balanced accuracy of chance (``1 / classes``); NaN for regression.
        threshold: head-only |rho| below which the maps come from random features.
        head_skipped: the job left the head-only check out (the held-out accuracy decides);
            the reason says so.
    """
    values = [float(v) for v in (head_scores or {}).values() if np.isfinite(v)]
    head = float(np.median(values)) if values else float("nan")
    common = {"head": head, "accuracy": accuracy, "accuracy_low": accuracy_low, "chance": chance}
    head_text = (
        f"head-only randomisation |rho| {head:.2f}"
        if np.isfinite(head)
        else "head-only check not run: the held-out accuracy decides"
        if head_skipped
        else ""
    )
    if held_out_decides(accuracy_low, chance):
        if accuracy_low <= chance:
            reason = (
                f"held-out balanced accuracy {accuracy:.2f} (95% low {accuracy_low:.2f}) is not "
                f"above chance {chance:.2f}"
            )
            return ModelVerdict("untrained", reason, **common)
        reason = f"held-out balanced accuracy {accuracy:.2f} > chance {chance:.2f}"
        return ModelVerdict("learned", "; ".join(filter(None, [reason, head_text])), **common)
    if np.isfinite(head):
        if head < threshold:
            return ModelVerdict("untrained", f"{head_text} < {threshold:.2f}", **common)
        return ModelVerdict("learned", f"{head_text} >= {threshold:.2f}", **common)
    return ModelVerdict("unknown", "no head-only check and no held-out predictions", **common)
