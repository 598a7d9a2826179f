"""Evaluation metrics of a search: classification, regression and well-level (grouped) metrics.

numpy in, plain Python floats / lists out, so every result serialises to JSON and Parquet.
scikit-learn is the reference implementation; this module adds input validation and defined
behaviour on the edge cases of cross-validation folds (absent classes, never-predicted classes,
a single class present, probabilities that do not sum to 1).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from difflib import get_close_matches

import numpy as np

# scikit-learn is imported inside the functions that use it: `import cytotune.engine.metrics` (metric
# names and directions, needed by study files and `--help`) stays light.

ROC_MAX_POINTS = 101

CLASSIFICATION_DIRECTIONS: dict[str, str] = {
    "accuracy": "max",
    "balanced_accuracy": "max",
    "precision_macro": "max",
    "recall_macro": "max",
    "f1_macro": "max",
    "f1_micro": "max",
    "f1_weighted": "max",
    "precision_weighted": "max",
    "recall_weighted": "max",
    "auc_macro": "max",
    "auc_micro": "max",
    "auc_weighted": "max",
    "auc_classes_present": "max",
    "log_loss": "min",
}
# Per-target metrics: "r2/<target>" etc. are valid names too.
PER_TARGET_DIRECTIONS: dict[str, str] = {"r2": "max", "mse": "min", "mae": "min"}
METRIC_DIRECTIONS: dict[str, str] = {
    **CLASSIFICATION_DIRECTIONS,
    **PER_TARGET_DIRECTIONS,
    "loss": "min",
    "n": "max",
    "purity_mean": "max",
    "purity_min": "max",
}
TASKS = ("classification", "regression")


# ---------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------
def _check_proba(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> tuple:
    """Validate labels and probabilities; return (y_true int64 (N,), proba renormalised (N, K))."""
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    k = len(classes)
    if k < 2:
        raise ValueError(f"classes must name at least 2 classes, got {list(classes)}")
    if y_true.ndim != 1:
        raise ValueError(f"y_true must be 1-D (N,) class indices, got shape {y_true.shape}")
    if proba.ndim != 2 or proba.shape != (len(y_true), k):
        raise ValueError(
            f"proba must have shape (N, K) = ({len(y_true)}, {k}) to match y_true and classes, "
            f"got {proba.shape}"
        )
    if len(y_true) == 0:
        raise ValueError("no samples: y_true and proba are empty")
    if not np.issubdtype(y_true.dtype, np.integer):
        if not (np.issubdtype(y_true.dtype, np.floating) and np.all(y_true == np.round(y_true))):
            raise ValueError(
                f"y_true must hold integer class indices, got dtype {y_true.dtype}; "
                "map class names to indices with the label map first"
            )
    y_true = y_true.astype(np.int64)
    bad = (y_true < 0) | (y_true >= k)
    if bad.any():
        raise ValueError(
            f"y_true has class indices outside 0..{k - 1} (for {k} classes): "
            f"{sorted(set(y_true[bad].tolist()))[:10]}"
        )
    if not np.isfinite(proba).all():
        rows = np.flatnonzero(~np.isfinite(proba).all(axis=1))
        raise ValueError(
            f"proba has NaN or infinite values in {len(rows)} rows (first: {rows[:5].tolist()}); "
            "check the model output (e.g. a diverged trial) before computing metrics"
        )
    if (proba < 0).any():
        rows = np.flatnonzero((proba < 0).any(axis=1))
        raise ValueError(
            f"proba has negative values in {len(rows)} rows (first: {rows[:5].tolist()}); "
            "pass probabilities (softmax of the logits), not logits"
        )
    sums = proba.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        rows = np.flatnonzero(sums[:, 0] <= 0)
        raise ValueError(f"proba rows {rows[:5].tolist()} sum to 0; cannot renormalise")
    return y_true, proba / sums


def thin_curve(fpr: np.ndarray, tpr: np.ndarray, max_points: int = ROC_MAX_POINTS) -> tuple:
    """Keep at most ``max_points`` ROC points, evenly spaced along the curve, endpoints kept.

    Points are picked at even steps of ``fpr + tpr`` (monotone along a ROC curve), so the
    subset stays monotone and follows the curve closely where it bends.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2 to keep both endpoints, got {max_points}")
    n = len(fpr)
    if n <= max_points:
        return fpr, tpr
    position = fpr + tpr  # non-decreasing from the (0, 0) end to the (1, 1) end
    targets = np.linspace(position[0], position[-1], max_points)[1:-1]
    idx = np.unique(np.concatenate([[0], np.searchsorted(position, targets), [n - 1]]))
    return fpr[idx], tpr[idx]


def _roc_curves(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict:
    """One-vs-rest ROC curve per class that has both positives and negatives in ``y_true``."""
    from sklearn import metrics as skm

    curves = {}
    for c, name in enumerate(classes):
        positives = y_true == c
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = skm.roc_curve(positives, proba[:, c])
        auc = float(skm.auc(fpr, tpr))
        fpr, tpr = thin_curve(fpr, tpr)
        curves[str(name)] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": auc}
    return curves


def _auc_scores(y_true: np.ndarray, proba: np.ndarray, k: int) -> dict:
    """AUC-ROC macro / micro / weighted (one-vs-rest), NaN where undefined.

    Binary (K=2): like ``roc_auc_score`` on binary input, all three are the AUC of the positive
    class (index 1), whose ``average`` argument is ignored for binary targets. Multiclass: macro
    and weighted are over the classes present in ``y_true`` (an absent class has no ROC curve;
    with weights by prevalence, weighted equals sklearn's over all K); micro pools all K one-vs-
    rest columns, exactly as ``roc_auc_score(..., average="micro", labels=range(K))``.
    """
    from sklearn import metrics as skm

    present = np.unique(y_true)
    nan = float("nan")
    if len(present) < 2:
        micro = nan
        if k > 2:  # the pooled one-vs-rest columns still hold positives and negatives
            micro = float(skm.roc_auc_score(_one_hot(y_true, k).ravel(), proba.ravel()))
        return {"auc_macro": nan, "auc_micro": micro, "auc_weighted": nan, "auc_classes_present": 1}
    if k == 2:
        auc = float(skm.roc_auc_score(y_true, proba[:, 1]))
        return {"auc_macro": auc, "auc_micro": auc, "auc_weighted": auc, "auc_classes_present": 2}
    onehot = _one_hot(y_true, k)
    return {
        "auc_macro": float(skm.roc_auc_score(onehot[:, present], proba[:, present])),
        "auc_micro": float(skm.roc_auc_score(onehot.ravel(), proba.ravel())),
        "auc_weighted": float(
            skm.roc_auc_score(onehot[:, present], proba[:, present], average="weighted")
        ),
        "auc_classes_present": len(present),
    }


def _one_hot(y: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(y), k), dtype=np.int64)  # (N, K)
    out[np.arange(len(y)), y] = 1
    return out


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str], detail: bool = True
) -> dict:
    """Classification metrics of one evaluation (a fold, or a whole study's predictions).

    Predictions are ``argmax(proba)``. Precision, recall and F1 follow scikit-learn's defaults:
    averaged over the classes present in ``y_true`` or predicted, with 0 where undefined
    (``zero_division=0``). Balanced accuracy averages recall over the classes in ``y_true``.

    Args:
        y_true: (N,) integer class indices in ``0..K-1``.
        proba: (N, K) class probabilities; rows are renormalised to sum to 1.
        classes: the K class names, in index order.
        detail: also the AUCs, the confusion matrix and the ROC curves (4/5 of the cost with
            many classes); False for learning-curve points.

    Returns:
        Scalar entries ``accuracy, balanced_accuracy, precision_macro, recall_macro, f1_macro,
        f1_micro, f1_weighted, precision_weighted, recall_weighted, auc_macro, auc_micro,
        auc_weighted, auc_classes_present, log_loss, n`` (AUC is NaN where undefined, see
        ``_auc_scores``); ``confusion_matrix`` (K x K ints, rows true, columns predicted);
        ``roc``: class name -> ``{"fpr", "tpr", "auc"}`` for each class with positives and
        negatives, at most 101 points per curve (``auc`` is from the full curve).

    Raises:
        ValueError: on mismatched shapes, labels out of range, or NaN / negative probabilities.
    """
    from sklearn import metrics as skm
    from sklearn.exceptions import UndefinedMetricWarning

    y_true, proba = _check_proba(y_true, proba, classes)
    k = len(classes)
    y_pred = proba.argmax(axis=1)
    out: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        out["accuracy"] = float(skm.accuracy_score(y_true, y_pred))
        out["balanced_accuracy"] = float(skm.balanced_accuracy_score(y_true, y_pred))
        for avg in ("macro", "weighted"):
            p, r, f, _ = skm.precision_recall_fscore_support(
                y_true, y_pred, average=avg, zero_division=0
            )
            out[f"precision_{avg}"] = float(p)
            out[f"recall_{avg}"] = float(r)
            out[f"f1_{avg}"] = float(f)
        out["f1_micro"] = float(skm.f1_score(y_true, y_pred, average="micro", zero_division=0))
        out["log_loss"] = float(skm.log_loss(y_true, proba, labels=list(range(k))))
        out["n"] = len(y_true)
        if not detail:
            return out
        out.update(_auc_scores(y_true, proba, k))
        cm = skm.confusion_matrix(y_true, y_pred, labels=list(range(k)))
        out["confusion_matrix"] = cm.astype(int).tolist()
        out["roc"] = _roc_curves(y_true, proba, classes)
    return out


# ---------------------------------------------------------------------------------------------
# regression
# ---------------------------------------------------------------------------------------------
def _as_2d(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape (N, T) or (N,), got {a.shape}")
    return a


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, target_names: Sequence[str]) -> dict:
    """R^2, MSE and MAE per target (``r2/<name>`` ...) and their means over targets.

    Args:
        y_true: (N, T) true targets ((N,) for one target).
        y_pred: (N, T) predictions, same shape.
        target_names: the T target names.

    Returns:
        ``r2``, ``mse``, ``mae`` (means over targets), ``r2/<name>``, ``mse/<name>``,
        ``mae/<name>`` per target, and ``n``. R^2 follows ``sklearn.metrics.r2_score``
        (a constant target gives 1.0 for a perfect prediction, else 0.0).

    Raises:
        ValueError: on mismatched shapes or non-finite values.
    """
    from sklearn import metrics as skm
    from sklearn.exceptions import UndefinedMetricWarning

    y_true, y_pred = _as_2d(y_true, "y_true"), _as_2d(y_pred, "y_pred")
    names = [str(t) for t in target_names]
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must have one shape")
    if y_true.shape[1] != len(names):
        raise ValueError(
            f"target_names has {len(names)} names {names} but the arrays have "
            f"{y_true.shape[1]} target columns"
        )
    if len(y_true) == 0:
        raise ValueError("no samples: y_true and y_pred are empty")
    for arr, label in ((y_true, "y_true"), (y_pred, "y_pred")):
        if not np.isfinite(arr).all():
            raise ValueError(f"{label} has NaN or infinite values; check the model output")
    per: dict[str, list[float]] = {"r2": [], "mse": [], "mae": []}
    out: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # R^2 of one sample: NaN
        for t, name in enumerate(names):
            yt, yp = y_true[:, t], y_pred[:, t]
            vals = {
                "r2": float(skm.r2_score(yt, yp)),
                "mse": float(skm.mean_squared_error(yt, yp)),
                "mae": float(skm.mean_absolute_error(yt, yp)),
            }
            for key, v in vals.items():
                out[f"{key}/{name}"] = v
                per[key].append(v)
    summary = {key: float(np.mean(v)) for key, v in per.items()}
    return {**summary, "n": len(y_true), **out}


# ---------------------------------------------------------------------------------------------
# grouped (well-level) metrics
# ---------------------------------------------------------------------------------------------
def aggregate_groups(
    groups: np.ndarray, y_true: np.ndarray, scores: np.ndarray, task: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Aggregate cell-level predictions per group (well): the mean of the scores per group.

    Classification: the group's label is the majority true label (ties go to the lowest class
    index) and ``purity`` is the fraction of its cells carrying that label. Regression: the
    group's target is the mean of its cells' targets and ``purity`` is the fraction of cells
    whose targets equal that mean (1.0 when targets are per well).

    Args:
        groups: (N,) group ids (e.g. well names).
        y_true: (N,) int class indices (classification) or (N,) / (N, T) targets (regression).
        scores: (N, K) probabilities or (N,) / (N, T) regression predictions.
        task: "classification" or "regression"; inferred from ``y_true``'s dtype when None
            (integer -> classification).

    Returns:
        ``(group_ids, y_true_g, scores_g, purity)``, groups in sorted order.
    """
    groups = np.asarray(groups)
    y_true, scores = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    if task is None:
        task = "classification" if np.issubdtype(y_true.dtype, np.integer) else "regression"
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    n = len(groups)
    if groups.ndim != 1 or len(y_true) != n or len(scores) != n:
        raise ValueError(
            f"groups {groups.shape}, y_true {y_true.shape} and scores {scores.shape} must have "
            "the same first dimension N (one entry per cell), groups 1-D"
        )
    if n == 0:
        raise ValueError("no samples: groups is empty")
    group_ids, inverse = np.unique(groups, return_inverse=True)
    g = len(group_ids)
    counts = np.bincount(inverse, minlength=g)
    scores_2d = scores.reshape(n, -1)
    sums = np.zeros((g, scores_2d.shape[1]))
    np.add.at(sums, inverse, scores_2d)
    scores_g = (sums / counts[:, None]).reshape((g,) + scores.shape[1:])
    if task == "classification":
        if y_true.ndim != 1:
            raise ValueError(f"classification y_true must be 1-D (N,), got {y_true.shape}")
        y_int = y_true.astype(np.int64)
        if y_int.min() < 0:
            raise ValueError("classification y_true must hold class indices >= 0")
        table = np.zeros((g, int(y_int.max()) + 1), dtype=np.int64)  # (G, K) label counts
        np.add.at(table, (inverse, y_int), 1)
        y_true_g = table.argmax(axis=1)
        purity = table.max(axis=1) / counts
    else:
        y2 = y_true.astype(np.float64).reshape(n, -1)
        tsum = np.zeros((g, y2.shape[1]))
        np.add.at(tsum, inverse, y2)
        means = tsum / counts[:, None]
        same = np.isclose(y2, means[inverse]).all(axis=1)
        purity = np.bincount(inverse, weights=same, minlength=g) / counts
        y_true_g = means.reshape((g,) + y_true.shape[1:])
    return group_ids, y_true_g, scores_g, purity


def group_metrics(
    groups: np.ndarray,
    y_true: np.ndarray,
    scores: np.ndarray,
    classes_or_targets: Sequence[str],
    task: str,
    prefix: str = "well/",
) -> dict:
    """Metrics at group (well) level: cells aggregated by ``aggregate_groups``, keys prefixed.

    Args:
        groups: (N,) group ids.
        y_true: cell-level labels (classification) or targets (regression).
        scores: (N, K) probabilities or (N, T) regression predictions.
        classes_or_targets: class names (classification) or target names (regression).
        task: "classification" or "regression".
        prefix: prepended to every key.

    Returns:
        The dict of ``classification_metrics`` / ``regression_metrics`` over groups, with
        ``n`` the number of groups, plus ``purity_mean`` and ``purity_min`` of the labels.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    _, y_g, s_g, purity = aggregate_groups(groups, y_true, scores, task)
    if task == "classification":
        base = classification_metrics(y_g, s_g, classes_or_targets)
    else:
        base = regression_metrics(y_g, s_g, classes_or_targets)
    base["purity_mean"] = float(purity.mean())
    base["purity_min"] = float(purity.min())
    return {f"{prefix}{key}": value for key, value in base.items()}


# ---------------------------------------------------------------------------------------------
# reporting helpers
# ---------------------------------------------------------------------------------------------
def _is_scalar(value: object) -> bool:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        return False
    return not math.isinf(float(value))


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The scalar entries of a metric dict as floats (NaN kept, inf dropped), e.g. for Ray Tune.

    Drops the confusion matrix, ROC curves and any other non-scalar entry.
    """
    return {key: float(v) for key, v in metrics.items() if _is_scalar(v)}


def metric_direction(name: str) -> str:
    """ "max" or "min" for a metric name, with any prefixes (``well/``, ``val/``, ``fold0/``).

    Per-target names (``r2/<target>``, ``well/mse/<target>``) take their metric's direction;
    a ``_std`` suffix (fold spread from ``mean_std``) is "min".

    Raises:
        ValueError: for an unknown metric, listing the known ones.
    """
    parts = str(name).split("/")
    for i, part in enumerate(parts):
        base = part.removesuffix("_std")
        if base not in METRIC_DIRECTIONS:
            continue
        trailing = parts[i + 1 :]
        if trailing and base not in PER_TARGET_DIRECTIONS:
            break  # e.g. "accuracy/foo": not a metric name
        if base != part:
            return "min"
        return METRIC_DIRECTIONS[base]
    close = get_close_matches(parts[-1], list(METRIC_DIRECTIONS), n=3)
    hint = f" (did you mean {close}?)" if close else ""
    raise ValueError(
        f"unknown metric {name!r}{hint}; known metrics: {sorted(METRIC_DIRECTIONS)}, optionally "
        "prefixed (e.g. 'well/', 'val/'), per target as 'r2/<target>', or with a '_std' suffix"
    )


def mean_std(per_fold: Sequence[dict]) -> dict[str, float]:
    """Fold mean and standard deviation of every scalar metric present in all folds.

    Returns ``{key: mean, key + "_std": std}`` with ``ddof=1`` for more than one fold and 0.0
    for one. A NaN in any fold gives a NaN mean (an undefined fold metric is not hidden).
    """
    if not per_fold:
        raise ValueError("per_fold is empty: pass one metric dict per fold")
    scalars = [scalar_metrics(m) for m in per_fold]
    keys = [k for k in scalars[0] if all(k in s for s in scalars[1:])]
    out: dict[str, float] = {}
    for key in keys:
        values = np.array([s[key] for s in scalars], dtype=np.float64)
        out[key] = float(values.mean())
        out[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out
