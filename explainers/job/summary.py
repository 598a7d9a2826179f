"""Text summary of ``explain/quality.parquet`` (printed at the end of ``cytotune explain``)."""

from __future__ import annotations

import pandas as pd

from ..quality.verdicts import MEANINGS
from .layout import read_index
from .verdicts import describe, sanity_table

COLUMNS = {
    "mass_cell": "in cell",
    "mass_evidence": "in evidence",
    "evidence_ratio_vs_random": "evid/random",
    "pointing_hit": "pointing",
    "deletion_auc": "deletion",
    "insertion_auc": "insertion",
    "n_distinct_prototypes": "distinct protos",
}


def quality_table(study_dir) -> pd.DataFrame:
    """Trial x method rows, one column per quality metric (means)."""
    table = read_index(study_dir, "quality")
    if table.empty:
        return pd.DataFrame()
    wide = table.pivot_table(
        index=["trial_id", "method"], columns="metric", values="mean", sort=False
    )
    return wide[[c for c in COLUMNS if c in wide]].rename(columns=COLUMNS)


def format_quality(study_dir) -> str:
    """The quality table with a sanity column (verdict, rho and its interval) and, under it,
    which methods did not pass and what that means for reading their maps."""
    wide = quality_table(study_dir)
    sanity = sanity_table(study_dir)
    if wide.empty and sanity.empty:
        return "no explanation quality scores yet"
    text = {(r["trial_id"], r["method"]): describe(r) for r in sanity.to_dict("records")}
    if wide.empty:
        wide = pd.DataFrame(
            index=pd.MultiIndex.from_tuples(list(text), names=["trial_id", "method"])
        )
    else:
        for key in text:
            if key not in wide.index:
                wide.loc[key, :] = float("nan")
    wide["sanity"] = [text.get((str(t), str(m)), "-") for t, m in wide.index]
    lines = [
        "explanation quality (means; deletion: lower is better, insertion: higher; sanity: maps "
        "of the trained model vs 3 weight-randomised copies, Spearman rho in the cell [95% CI] "
        "against the calibrated threshold)"
    ]
    lines.append(wide.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-"))
    if "model" in sanity:
        models = sanity.drop_duplicates("trial_id").set_index("trial_id")
        for trial_id, r in models.iterrows():  # the model verdict (explainers.quality.learned)
            reason = f" ({r['model_reason']})" if r["model_reason"] else ""
            lines.append(f"model {trial_id}: {r['model']}{reason}")
    bad = sanity[sanity["verdict"] != "passed"]
    for verdict, group in bad.groupby("verdict", sort=False):
        parts = ", ".join(f"{r['trial_id']} {r['method']}" for r in group.to_dict("records"))
        lines.append(f"{verdict.upper()}: {parts}: {MEANINGS[verdict]}")
    return "\n".join(lines)
