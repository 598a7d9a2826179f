"""Text summary of ``explain/quality.parquet`` (printed at the end of ``cytotune explain``)."""

from __future__ import annotations

import pandas as pd

from .layout import explain_dir

COLUMNS = {
    "mass_cell": "in cell",
    "mass_evidence": "in evidence",
    "evidence_ratio_vs_random": "evid/random",
    "pointing_hit": "pointing",
    "deletion_auc": "deletion",
    "insertion_auc": "insertion",
    "randomisation_spearman": "rand. rho",
    "randomisation_passed": "sanity",
    "n_distinct_prototypes": "distinct protos",
}


def quality_table(study_dir) -> pd.DataFrame:
    """Trial x method rows, one column per quality metric (means)."""
    path = explain_dir(study_dir) / "quality.parquet"
    if not path.is_file():
        return pd.DataFrame()
    table = pd.read_parquet(path)
    if table.empty:
        return pd.DataFrame()
    wide = table.pivot_table(
        index=["trial_id", "method"], columns="metric", values="mean", sort=False
    )
    return wide[[c for c in COLUMNS if c in wide]].rename(columns=COLUMNS)


def format_quality(study_dir) -> str:
    wide = quality_table(study_dir)
    if wide.empty:
        return "no explanation quality scores yet"
    lines = [
        "explanation quality (means; deletion: lower is better, insertion: higher; sanity 1 = passed)"
    ]
    lines.append(wide.to_string(float_format=lambda v: f"{v:.3f}"))
    return "\n".join(lines)
