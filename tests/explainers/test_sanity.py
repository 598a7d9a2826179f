"""The sanity check's statistics against scipy, its verdicts on cases with known answers, the
shared verdict table and the CAM layer choice."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from cytotune.explainers.job.layout import explain_dir, write_frame
from cytotune.explainers.job.summary import format_quality
from cytotune.explainers.job.verdicts import describe, sanity_table, trial_scores
from cytotune.explainers.job.worker import cam_layers, layer_info
from cytotune.explainers.quality.sanity import (
    SanityConfig,
    bootstrap_ci,
    cascade_stages,
    combine,
    fp32,
    sanity_check,
    spearman_rows,
    verdict,
)
from scipy import stats
from torch import nn

from tests.explainers.tiny import Tiny


def test_bootstrap_ci_matches_scipy_percentile():
    values = np.random.default_rng(0).normal(0.3, 0.2, size=60)
    ours = bootstrap_ci(values, n_boot=4000, level=0.95, seed=1)
    ref = stats.bootstrap(
        (values,), np.mean, n_resamples=4000, method="percentile", random_state=2
    ).confidence_interval
    assert ours == pytest.approx((ref.low, ref.high), abs=0.01)
    assert bootstrap_ci([0.4], 200) == (0.4, 0.4)
    assert all(np.isnan(bootstrap_ci([np.nan], 200)))


def test_spearman_inside_masks_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 1, 12, 12)), rng.random((3, 1, 12, 12))
    b[:, :, :6] = a[:, :, :6]  # the top half agrees
    masks = np.zeros((3, 12, 12), bool)
    masks[:, 2:10, 3:9] = True
    masks[2] = False
    masks[2, 0, :2] = True  # two pixels: too few for a correlation
    got = spearman_rows(a, b, masks)
    for i in range(2):
        want = stats.spearmanr(a[i, 0][masks[i]], b[i, 0][masks[i]]).statistic
        assert got[i] == pytest.approx(want, abs=1e-12)
    assert np.isnan(got[2])
    whole = spearman_rows(a, b)
    assert whole[0] == pytest.approx(stats.spearmanr(a[0].ravel(), b[0].ravel()).statistic)


def test_verdict_rules():
    assert verdict(0.1, 0.3, 0.5) == "passed"
    assert verdict(0.5, 0.7, 0.5) == "failed"
    assert verdict(0.4, 0.6, 0.5) == "inconclusive"
    assert verdict(float("nan"), 0.2, 0.5) == "inconclusive"
    with pytest.raises(ValueError, match="seeds must be >= 2"):
        SanityConfig(seeds=1)


def test_known_answers_input_map_fails_weight_map_passes():
    model = Tiny().eval()
    x = torch.randn(24, 2, 10, 10)
    config = SanityConfig(seeds=3, n_boot=500, threshold=0.5)

    def input_only(m):  # Adebayo's edge-detector case: no dependence on the weights at all
        return x.abs().sum(1, keepdim=True)

    def weights_only(m):  # a map made of the (random or learned) weights alone
        w = m.conv.weight.detach().abs().sum((0, 1))  # (3, 3)
        return w.repeat(4, 4)[:10, :10].expand(len(x), 1, 10, 10) + 1e-3 * x[:, :1]

    failed = sanity_check(input_only, model, config)
    assert failed.verdict == "failed"
    assert failed.rho_mean == pytest.approx(1.0)
    assert failed.null_mean == pytest.approx(1.0)
    passed = sanity_check(weights_only, model, config)
    assert passed.verdict == "passed", passed.as_dict()
    assert passed.ci_low <= passed.rho_mean <= passed.ci_high
    assert set(passed.cascade) == set(cascade_stages(model, config.cascade))
    metrics = passed.metrics()
    assert metrics["sanity_verdict"] == 1.0
    assert metrics["sanity_threshold"] == 0.5
    # pooling two halves (e.g. two fold models) gives the same rho as one call on every cell
    pooled = combine([passed, passed], config)
    assert pooled.rho_mean == pytest.approx(passed.rho_mean)
    assert pooled.n_cells == 2 * len(x)


def test_fp32_context_turns_tf32_off_and_restores_it():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with fp32("cpu"):
        assert not torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pass
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


class Trunk(nn.Module):
    """An attention-network-like trunk: only its 3x3 last block is a declared feature layer."""

    def __init__(self):
        super().__init__()

        def block(cin):
            return nn.Sequential(nn.Conv2d(cin, 4, 3, stride=2, padding=1), nn.ReLU())

        self.body = nn.Sequential()
        self.body.add_module("stem", nn.Conv2d(3, 3, 1))  # a leaf, not a block: never a CAM layer
        self.body.add_module("layer1", block(3))  # 12x12
        self.body.add_module("layer2", block(4))  # 6x6
        self.body.add_module("layer3", block(4))  # 3x3
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))

    def feature_layers(self):
        return {"body.layer3": self.body.layer3}


def test_cam_layer_skips_a_3x3_map_for_a_sibling_block():
    model = Trunk()
    assert cam_layers(model, (3, 24, 24)) == ["body.layer1", "body.layer2"]
    info = layer_info("gradcam", model, (3, 24, 24))
    assert info["layers"] == ["body.layer2"]
    assert info["sizes"] == {"body.layer2": [6, 6]}
    assert info["all"]["body.layer3"] == [3, 3]
    assert "body.stem" not in info["all"]
    assert layer_info("layercam", model, (3, 24, 24))["layers"] == ["body.layer1", "body.layer2"]
    asked = layer_info("gradcam", model, (3, 24, 24), requested="body.layer1")
    assert asked["layers"] == ["body.layer1"]
    assert asked["requested"]
    assert layer_info("saliency", model, (3, 24, 24)) == {}


def _write_quality(study, rows):
    frame = pd.DataFrame(rows, columns=["trial_id", "method", "metric", "mean", "std", "n"])
    write_frame(frame, explain_dir(study) / "quality.parquet")


def test_verdict_table_summary_and_scores(tmp_path):
    rows = [
        ("t1", "gradcam", "sanity_rho", 0.71, 0, 64),
        ("t1", "gradcam", "sanity_rho_low", 0.65, 0, 64),
        ("t1", "gradcam", "sanity_rho_high", 0.77, 0, 64),
        ("t1", "gradcam", "sanity_threshold", 0.5, 0, 64),
        ("t1", "gradcam", "sanity_verdict", 0.0, 0, 64),
        ("t1", "gradcam", "deletion_auc", 0.6, 0.1, 64),
        ("t1", "gradcam", "insertion_auc", 0.7, 0.1, 64),
        ("t1", "saliency", "sanity_rho", 0.1, 0, 64),
        ("t1", "saliency", "sanity_rho_low", 0.05, 0, 64),
        ("t1", "saliency", "sanity_rho_high", 0.15, 0, 64),
        ("t1", "saliency", "sanity_threshold", 0.5, 0, 64),
        ("t1", "saliency", "sanity_verdict", 1.0, 0, 64),
        ("t1", "saliency", "deletion_auc", 0.2, 0.1, 64),
        ("t1", "saliency", "insertion_auc", 0.9, 0.1, 64),
        ("t2", "gradcam", "randomisation_passed", 1.0, 0, 32),  # a study explained before
        ("t2", "gradcam", "randomisation_spearman", 0.2, 0.1, 32),
    ]
    _write_quality(tmp_path, rows)
    table = sanity_table(tmp_path).set_index(["trial_id", "method"])
    assert table.loc[("t1", "gradcam"), "verdict"] == "failed"
    assert describe(table.loc[("t1", "gradcam")]) == "failed (rho 0.71 [0.65, 0.77] >= 0.50)"
    assert table.loc[("t2", "gradcam"), "legacy"]
    assert describe(table.loc[("t2", "gradcam")]) == "passed (rho 0.20, one random copy)"
    text = format_quality(tmp_path)
    assert "failed (rho 0.71 [0.65, 0.77] >= 0.50)" in text
    assert "FAILED: t1 gradcam: maps barely change" in text
    scores = trial_scores(tmp_path)
    assert scores.loc["t1", "explain_sanity"] == 0.5
    assert scores.loc["t1", "explain_score"] == pytest.approx(0.9 - 0.2)  # passing methods only
    assert scores.loc["t1", "explain_deletion_auc"] == pytest.approx(0.4)


def test_check_precision_allows_tf32_on_a_gpu_only_and_obeys_the_switch(monkeypatch):
    from cytotune.explainers.quality.sanity import check_precision, check_tf32

    monkeypatch.delenv("CYTOTUNE_CHECK_TF32", raising=False)
    assert (check_tf32("cuda"), check_tf32("cpu")) == (True, False)
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with check_precision("cuda"):
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (
            True,
            True,
        )
    with check_precision("cpu"):
        assert not torch.backends.cudnn.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before
    monkeypatch.setenv("CYTOTUNE_CHECK_TF32", "0")
    assert not check_tf32("cuda")
    monkeypatch.setenv("CYTOTUNE_CHECK_TF32", "yes")
    with pytest.raises(ValueError, match="CYTOTUNE_CHECK_TF32 must be 0"):
        check_tf32("cuda")
    monkeypatch.setenv("CYTOTUNE_CHECK_BF16", "on")  # the measuring switch: 0 or 1 only
    with pytest.raises(ValueError, match="CYTOTUNE_CHECK_BF16 must be 0"):
        check_precision("cuda")
    monkeypatch.setenv("CYTOTUNE_CHECK_BF16", "1")  # bf16 on a GPU only, fp32 on the CPU
    with check_precision("cpu"):
        assert not torch.is_autocast_enabled("cpu")
