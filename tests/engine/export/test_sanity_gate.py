"""`pull --require-sanity` and the model card read the new sanity verdicts (fast: a quality
table alone, no models)."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
from cytotune.engine.export.aliases import sanity_status
from cytotune.engine.export.card import _explain_section
from cytotune.engine.export.command import _require_sanity
from cytotune.explainers.job.layout import explain_dir, write_frame


def _quality(study, verdicts: dict[str, tuple[float, float, float, float]]):
    rows = []
    for method, (rho, low, high, code) in verdicts.items():
        for metric, value in (
            ("sanity_rho", rho),
            ("sanity_rho_low", low),
            ("sanity_rho_high", high),
            ("sanity_threshold", 0.66),
            ("sanity_verdict", code),
            ("randomisation_passed", float(code == 1.0)),
            ("deletion_auc", 0.5),
        ):
            rows.append(("t1", method, metric, value, 0.0, 64))
    frame = pd.DataFrame(rows, columns=["trial_id", "method", "metric", "mean", "std", "n"])
    write_frame(frame, explain_dir(study) / "quality.parquet")


def test_inconclusive_does_not_pass_and_the_refusal_names_it(tmp_path):
    _quality(
        tmp_path,
        {"gradcam": (0.2, 0.1, 0.3, 1.0), "layercam": (0.64, 0.58, 0.7, 0.5)},
    )
    status = sanity_status(tmp_path, "t1")
    assert status["methods"] == {"gradcam": 1.0, "layercam": 0.0}
    assert not status["passed"]
    with pytest.raises(ValueError) as err:
        _require_sanity(str(tmp_path), "t1", "pull")
    text = str(err.value)
    assert "layercam: inconclusive (rho 0.64 [0.58, 0.70] ~ 0.66)" in text
    assert "gradcam" not in text.split("check for")[1].split("(")[0]
    assert "Pull another trial" in text


def test_all_passed_is_accepted(tmp_path):
    _quality(tmp_path, {"gradcam": (0.2, 0.1, 0.3, 1.0)})
    assert _require_sanity(str(tmp_path), "t1", "promote")["passed"]


def test_model_card_lists_each_verdict_and_its_meaning(tmp_path):
    _quality(tmp_path, {"gradcam": (0.81, 0.75, 0.87, 0.0), "saliency": (0.1, 0.05, 0.15, 1.0)})
    text = "\n".join(_explain_section(SimpleNamespace(study_dir=tmp_path, trial_id="t1")))
    assert "- gradcam: FAILED (rho 0.81 [0.75, 0.87] >= 0.66): maps barely change" in text
    assert "- saliency: passed (rho 0.10 [0.05, 0.15] < 0.66): maps change" in text
    assert "Do not read the maps of gradcam as explanations of this model." in text
