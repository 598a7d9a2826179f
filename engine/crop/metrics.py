"""Instance detection scores: matched objects at IoU thresholds, as in the 2018 Data Science Bowl.

A true object and a predicted object match at threshold ``t`` when their mask IoU is above ``t``
(strictly). With non-overlapping masks and ``t >= 0.5`` each object matches at most one other,
so no assignment problem arises. Per field and threshold: TP, FP = predictions left over,
FN = truths left over. The Bowl's score of a field is the mean over ``t`` in 0.5, 0.55, ..., 0.95
of TP / (TP + FP + FN); the benchmark averages it over fields. Precision, recall and F1 at 0.5
pool the objects of all fields.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

DSB_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Map the ids of a label image to 0..N (0 stays background)."""
    flat = np.asarray(labels).ravel()
    ids, inverse = np.unique(flat, return_inverse=True)
    if ids[0] != 0:  # no background pixel: shift so index 0 stays "background"
        return inverse + 1, len(ids)
    return inverse, len(ids) - 1


def iou_matrix(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Mask IoU of every true object (rows) with every predicted object (columns).

    Args:
        truth: (H, W) instance label image, 0 = background.
        pred: (H, W) instance label image of the same shape.

    Returns:
        (n_true, n_pred) float64 array; objects are ordered by increasing label id.
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"label images differ in shape: truth {truth.shape}, pred {pred.shape}")
    t, nt = _relabel(truth)
    p, np_ = _relabel(pred)
    inter = np.bincount(t * (np_ + 1) + p, minlength=(nt + 1) * (np_ + 1))
    inter = inter.reshape(nt + 1, np_ + 1).astype(np.float64)
    area_t, area_p = inter.sum(axis=1), inter.sum(axis=0)
    inter = inter[1:, 1:]
    union = area_t[1:, None] + area_p[None, 1:] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


@dataclass(frozen=True)
class FieldScore:
    """Matches of one field at every threshold."""

    n_true: int
    n_pred: int
    tp: tuple[int, ...]  # one count per threshold
    thresholds: tuple[float, ...] = DSB_THRESHOLDS

    def average_precision(self) -> float:
        """The Bowl's score: mean over thresholds of TP / (TP + FP + FN); 1.0 for two empty fields."""
        if self.n_true == 0 and self.n_pred == 0:
            return 1.0
        values = [tp / (self.n_true + self.n_pred - tp) for tp in self.tp]
        return float(np.mean(values))

    def at(self, threshold: float) -> int:
        """TP at one of the thresholds."""
        return self.tp[self.thresholds.index(round(threshold, 2))]


def score_field(
    truth: np.ndarray, pred: np.ndarray, thresholds: Iterable[float] = DSB_THRESHOLDS
) -> FieldScore:
    """Count matches between a true and a predicted label image at each IoU threshold."""
    thresholds = tuple(round(float(t), 2) for t in thresholds)
    if min(thresholds, default=0.5) < 0.5:
        raise ValueError(f"thresholds below 0.5 can match one object twice: {thresholds}")
    iou = iou_matrix(truth, pred)
    tp = tuple(int((iou > t).sum()) for t in thresholds)
    return FieldScore(iou.shape[0], iou.shape[1], tp, thresholds)


def summarise(scores: list[FieldScore], threshold: float = 0.5) -> dict[str, float]:
    """Pooled precision/recall/F1 at ``threshold`` and the mean Bowl score (mAP) over fields."""
    tp = sum(s.at(threshold) for s in scores)
    n_true = sum(s.n_true for s in scores)
    n_pred = sum(s.n_pred for s in scores)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * tp / (n_true + n_pred) if n_true + n_pred else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "map": float(np.mean([s.average_precision() for s in scores])) if scores else 0.0,
        "fields": len(scores),
        "true_objects": n_true,
        "predicted_objects": n_pred,
    }


def score_fields(truths: Iterable[np.ndarray], preds: Iterable[np.ndarray]) -> dict[str, float]:
    """:func:`summarise` over pairs of true and predicted label images."""
    return summarise([score_field(t, p) for t, p in zip(truths, preds, strict=True)])
