"""What the explain job's quality scores mean per trial and method, for every reader.

One table, read from ``explain/quality.parquet`` and the failures in ``explain/explain.json``,
that the CLI summary, the dashboard, the model card and ``pull --require-sanity`` all show:
per (trial, method) the sanity verdict (``passed``, ``failed``, ``inconclusive``, ``error``,
``untrained``), its rho and interval, the threshold and a sentence saying what the verdict
means. The randomisation check cannot tell an untrained model from a trained one, so each trial
also gets a model verdict (explainers.quality.learned: head-only randomisation and held-out
balanced accuracy versus chance); every method of a trial whose model looks untrained reads
``untrained`` (the per-method check stays in ``method_verdict``). Studies explained before the
interval existed (only ``randomisation_passed``) read as ``passed`` / ``failed`` with ``legacy``
set.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..quality.learned import ModelVerdict, model_verdict
from ..quality.verdicts import MEANINGS, VERDICT_NAMES
from .layout import STATE_FILE, explain_dir, read_index

SANITY_COLUMNS = (
    "trial_id",
    "method",
    "verdict",
    "rho",
    "rho_low",
    "rho_high",
    "threshold",
    "n",
    "legacy",
    "meaning",
    "error",
    "method_verdict",
    "model",
    "model_reason",
)
# per-trial scores the leaderboard and the compare page offer
SCORE_COLUMNS = {
    "explain_sanity": "methods passing the sanity check / methods scored",
    "explain_deletion_auc": "deletion AUC, mean over methods (lower: the maps find what matters)",
    "explain_insertion_auc": "insertion AUC, mean over methods (higher is better)",
    "explain_in_cell": "share of positive map mass inside the cell mask, mean over methods",
    "explain_score": (
        "insertion - deletion AUC, mean over the methods that passed the sanity check "
        "(0 when none passed): faithful maps that show what the model learned"
    ),
}


def _quality(study_dir) -> pd.DataFrame:
    return read_index(study_dir, "quality")


def failures(study_dir) -> dict[tuple[str, str], str]:
    """(trial_id, method) -> why the method could not run (from ``explain.json``)."""
    path = explain_dir(study_dir) / STATE_FILE
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    out = {}
    for part, reason in (data.get("failures") or {}).items():
        bits = str(part).split("/")
        if len(bits) == 3 and bits[0] == "maps":
            out[(bits[1], bits[2])] = str(reason)
    return out


def model_verdicts(quality: pd.DataFrame) -> dict[str, ModelVerdict]:
    """trial_id -> its model verdict, from the ``learned_head_rho`` of its methods (or
    ``learned_head_skipped``: not computed) and the held-out balanced accuracy the quality stage
    recorded (``unknown`` for older studies)."""
    if quality.empty:
        return {}
    wide = quality.pivot_table(
        index=["trial_id", "method"], columns="metric", values="mean", sort=False
    ).reset_index()
    wide = wide[wide["method"] != "prototypes"]
    out = {}
    for trial_id, group in wide.groupby("trial_id", sort=False):

        def first(column, group=group) -> float:
            values = group[column].dropna() if column in group else ()
            return float(values.iloc[0]) if len(values) else float("nan")

        heads = (
            dict(zip(group["method"], group["learned_head_rho"]))
            if "learned_head_rho" in group
            else {}
        )
        out[str(trial_id)] = model_verdict(
            heads,
            accuracy=first("heldout_balanced_accuracy"),
            accuracy_low=first("heldout_balanced_accuracy_low"),
            chance=first("chance_balanced_accuracy"),
            head_skipped=first("learned_head_skipped") == 1,
        )
    return out


def sanity_table(study_dir, quality: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (trial, method) with a verdict (columns: SANITY_COLUMNS)."""
    quality = _quality(study_dir) if quality is None else quality
    rows = []
    models = model_verdicts(quality)
    if not quality.empty:
        wide = quality.pivot_table(
            index=["trial_id", "method"], columns="metric", values="mean", sort=False
        )
        counts = quality.pivot_table(
            index=["trial_id", "method"], columns="metric", values="n", sort=False
        )
        for (trial_id, method), r in wide.iterrows():
            if method == "prototypes":
                continue
            if pd.notna(r.get("sanity_verdict", np.nan)):
                name = VERDICT_NAMES.get(float(r["sanity_verdict"]), "inconclusive")
                legacy = False
            elif pd.notna(r.get("randomisation_passed", np.nan)):
                name = "passed" if r["randomisation_passed"] >= 1 else "failed"
                legacy = True
            else:
                continue
            rho = r.get("sanity_rho", np.nan)
            if pd.isna(rho):
                rho = r.get("randomisation_spearman", np.nan)
            n = counts.loc[(trial_id, method)].get("sanity_rho", np.nan)
            model = models.get(str(trial_id))
            untrained = model is not None and model.verdict == "untrained"
            rows.append(
                {
                    "trial_id": str(trial_id),
                    "method": str(method),
                    "verdict": "untrained" if untrained else name,
                    "method_verdict": name,
                    "model": model.verdict if model is not None else "unknown",
                    "model_reason": model.reason if model is not None else None,
                    "rho": float(rho) if pd.notna(rho) else np.nan,
                    "rho_low": float(r.get("sanity_rho_low", np.nan)),
                    "rho_high": float(r.get("sanity_rho_high", np.nan)),
                    "threshold": float(r.get("sanity_threshold", 0.5 if legacy else np.nan)),
                    "n": int(n) if pd.notna(n) else None,
                    "legacy": legacy,
                    "meaning": MEANINGS["untrained" if untrained else name],
                    "error": None,
                }
            )
    for (trial_id, method), reason in failures(study_dir).items():
        rows.append(
            {
                "trial_id": trial_id,
                "method": method,
                "verdict": "error",
                "rho": np.nan,
                "rho_low": np.nan,
                "rho_high": np.nan,
                "threshold": np.nan,
                "n": None,
                "legacy": False,
                "meaning": MEANINGS["error"],
                "error": reason,
                "method_verdict": "error",
                "model": models[trial_id].verdict if trial_id in models else "unknown",
                "model_reason": models[trial_id].reason if trial_id in models else None,
            }
        )
    return pd.DataFrame(rows, columns=list(SANITY_COLUMNS))


def describe(row) -> str:
    """``failed (rho 0.71 [0.65, 0.77] >= 0.50)``-style text of one sanity row; for a trial
    whose model looks untrained, ``untrained model (<why>); method check: <that text>``."""
    verdict = row["verdict"]
    if verdict == "error":
        return f"error: {row['error']}"
    if verdict == "untrained":
        inner = describe({**row, "verdict": row.get("method_verdict") or "inconclusive"})
        return f"untrained model ({row.get('model_reason')}); method check: {inner}"
    if not np.isfinite(row["rho"]):
        return verdict
    if row.get("legacy") or not np.isfinite(row["rho_low"]):
        return f"{verdict} (rho {row['rho']:.2f}, one random copy)"
    sign = {"passed": "<", "failed": ">=", "inconclusive": "~"}[verdict]
    return (
        f"{verdict} (rho {row['rho']:.2f} [{row['rho_low']:.2f}, {row['rho_high']:.2f}] "
        f"{sign} {row['threshold']:.2f})"
    )


def failing_methods(study_dir, trial_id) -> dict[str, str]:
    """method -> verdict for the methods of ``trial_id`` that did not pass."""
    table = sanity_table(study_dir)
    rows = table[(table["trial_id"] == str(trial_id)) & (table["verdict"] != "passed")]
    return dict(zip(rows["method"], rows["verdict"]))


def trial_scores(study_dir) -> pd.DataFrame:
    """Per explained trial the SCORE_COLUMNS (index: trial_id; empty without scores)."""
    quality = _quality(study_dir)
    if quality.empty:
        return pd.DataFrame(columns=list(SCORE_COLUMNS))
    sanity = sanity_table(study_dir, quality)
    sanity = sanity[sanity["verdict"] != "error"]
    wide = quality.pivot_table(
        index=["trial_id", "method"], columns="metric", values="mean", sort=False
    ).reset_index()
    wide = wide[wide["method"] != "prototypes"]
    wide["trial_id"] = wide["trial_id"].astype(str)
    out = {}
    for trial_id, group in wide.groupby("trial_id", sort=False):
        verdicts = sanity[sanity["trial_id"] == trial_id].set_index("method")["verdict"]
        passed = [m for m in group["method"] if verdicts.get(m) == "passed"]

        def mean(column, frame=group):
            return float(frame[column].mean()) if column in frame else np.nan

        ok = group[group["method"].isin(passed)]
        score = (
            mean("insertion_auc", ok) - mean("deletion_auc", ok)
            if len(ok) and "insertion_auc" in ok and "deletion_auc" in ok
            else 0.0
        )
        out[trial_id] = {
            "explain_sanity": len(passed) / len(verdicts) if len(verdicts) else np.nan,
            "explain_deletion_auc": mean("deletion_auc"),
            "explain_insertion_auc": mean("insertion_auc"),
            "explain_in_cell": mean("mass_cell"),
            "explain_score": score,
        }
    return pd.DataFrame.from_dict(out, orient="index", columns=list(SCORE_COLUMNS))


def layers_path(study_dir) -> Path:
    return explain_dir(study_dir) / "layers.json"


def cam_layers(study_dir) -> dict:
    """``{trial_id: {method: layer info}}`` written by the job (explainers.job.worker.layer_info)."""
    path = layers_path(study_dir)
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
