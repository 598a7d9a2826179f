"""The sanity verdicts' names, codes and meanings: plain constants, no torch.

Kept apart from :mod:`.sanity` (which needs torch to run the check) so readers of the quality
tables, the dashboard's sanity page among them, load without torch.
"""

from __future__ import annotations

from .learned import MODEL_MEANINGS

__all__ = ["MEANINGS", "VERDICT_CODES", "VERDICT_NAMES"]

MEANINGS = {
    "passed": "maps change when the learned weights are destroyed: they show what the model learned",
    "failed": (
        "maps barely change when the learned weights are destroyed: they mostly show the input "
        "(bright or edged structures), not the model's evidence; do not read them as explanations"
    ),
    "inconclusive": (
        "the confidence interval straddles the threshold: explain more cells "
        "(--quality-cells) before trusting or discarding this method"
    ),
    "not run": "the explain job has not scored this method",
    "error": "the method could not run on this model (see the error)",
    "untrained": MODEL_MEANINGS["untrained"],
}

# verdict -> the number written in quality.parquet's ``sanity_verdict`` column, and back
VERDICT_CODES = {"failed": 0.0, "inconclusive": 0.5, "passed": 1.0}
VERDICT_NAMES = {v: k for k, v in VERDICT_CODES.items()}
