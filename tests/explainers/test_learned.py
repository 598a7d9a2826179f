"""The model verdict (explainers.quality.learned): balanced accuracy against scikit-learn and
scipy, the head-only randomisation score against an independent scipy computation, the rules
on hand-checkable numbers, the verdict table, and a trained vs an untrained small CNN on a
synthetic task."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from cytotune.explainers.job.layout import explain_dir, write_frame
from cytotune.explainers.job.summary import format_quality
from cytotune.explainers.job.verdicts import describe, model_verdicts, sanity_table, trial_scores
from cytotune.explainers.quality import randomize_weights
from cytotune.explainers.quality.learned import (
    HEAD_THRESHOLD,
    balanced_accuracy,
    balanced_accuracy_ci,
    model_verdict,
)
from cytotune.explainers.quality.sanity import SanityConfig, sanity_check
from scipy import stats
from sklearn.metrics import balanced_accuracy_score

from tests.explainers.tiny import Tiny


def test_balanced_accuracy_matches_sklearn_and_scipy_bootstrap():
    rng = np.random.default_rng(0)
    labels = rng.choice(3, size=300, p=[0.6, 0.3, 0.1])
    predictions = np.where(rng.random(300) < 0.5, labels, rng.integers(0, 3, 300))
    assert balanced_accuracy(labels, predictions) == pytest.approx(
        balanced_accuracy_score(labels, predictions), abs=1e-12
    )
    value, low, high = balanced_accuracy_ci(labels, predictions, n_boot=2000, seed=1)
    assert low < value < high
    ref = stats.bootstrap(
        (labels, predictions),
        balanced_accuracy_score,
        paired=True,
        vectorized=False,
        n_resamples=500,
        method="percentile",
        random_state=2,
    ).confidence_interval
    assert (low, high) == pytest.approx((ref.low, ref.high), abs=0.025)
    # hand-checkable: always predicting the majority class scores exactly 1 / classes
    assert balanced_accuracy([0, 0, 0, 1], [0, 0, 0, 0]) == 0.5
    assert balanced_accuracy([0, 1, 2, 2], [0, 1, 2, 0]) == pytest.approx((1 + 1 + 0.5) / 3)
    with pytest.raises(ValueError, match="differ"):
        balanced_accuracy([0, 1], [0])


def test_model_verdict_rules_on_hand_checkable_numbers():
    t = 0.45
    learned = model_verdict({"a": 0.9, "b": 0.1, "c": 0.8}, 0.9, 0.85, 0.5, threshold=t)
    assert learned.verdict == "learned"
    assert learned.head == 0.8  # median of 0.1, 0.8, 0.9
    # the head says learned, but the held-out cells are at chance: untrained
    chance = model_verdict({"a": 0.9}, 0.52, 0.48, 0.5, threshold=t)
    assert chance.verdict == "untrained"
    assert "not above chance 0.50" in chance.reason
    # above chance: learned, whatever the head says (the accuracy decides where it is known)
    above = model_verdict({"a": 0.2, "b": 0.3, "c": 0.9}, 0.9, 0.8, 0.5, threshold=t)
    assert above.verdict == "learned"
    assert "|rho| 0.30" in above.reason
    # no held-out accuracy (regression): the head decides; NaN heads are ignored
    head = model_verdict({"a": 0.2, "b": 0.3, "c": 0.9}, threshold=t)
    assert head.verdict == "untrained"
    assert "|rho| 0.30 < 0.45" in head.reason
    assert model_verdict({"a": 0.5, "b": float("nan")}, threshold=t).verdict == "learned"
    assert model_verdict({}).verdict == "unknown"
    assert 0 < HEAD_THRESHOLD < 1


def test_head_score_matches_scipy_and_ignores_a_sign_flip():
    model = Tiny().eval()
    x = torch.randn(12, 2, 8, 8)
    config = SanityConfig(seeds=3, n_boot=200, cascade=())

    def mixed(m):  # depends on the head (fc) and on the trunk (conv)
        w = m.fc.weight.detach()  # (3, 4)
        feats = torch.relu(m.conv(x)).detach()  # (B, 4, 8, 8)
        return (feats * w[0][None, :, None, None]).sum(1, keepdim=True)

    result = sanity_check(mixed, model, config)
    a = mixed(model).numpy()
    want = np.zeros(len(x))
    for seed in range(3):
        heads = randomize_weights(model, seed=seed, mode="cascading", layers=1)
        b = mixed(heads).numpy()
        want += np.abs([stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in range(12)])
    np.testing.assert_allclose(result.head, want / 3, atol=1e-9)
    assert result.metrics()["learned_head_rho"] == pytest.approx(want.mean() / 3)

    def flipped(m):  # the head only sets the sign: a new head moves no evidence
        return torch.sign(m.fc.weight.detach().sum()) * x[:, :1].abs()

    flip = sanity_check(flipped, model, config)
    assert flip.head_mean == pytest.approx(1.0)


def test_without_the_head_only_score_the_check_draws_two_maps_less_and_says_so():
    model = Tiny().eval()
    x = torch.randn(12, 2, 8, 8)
    calls = []

    def maps(m):
        calls.append(1)
        return torch.relu(m.conv(x)).detach().sum(1, keepdim=True) * m.fc.weight.detach().sum()

    config = SanityConfig(seeds=3, n_boot=200)
    full = sanity_check(maps, model, config)
    drawn = len(calls)
    calls.clear()
    lean = sanity_check(maps, model, dataclasses.replace(config, head_only=False))
    assert drawn - len(calls) == 2  # the head re-drawn with seeds 1 and 2
    assert lean.head is None
    metrics = lean.metrics()
    assert metrics["learned_head_skipped"] == 1
    assert not any(k.startswith("learned_head_") and k != "learned_head_skipped" for k in metrics)
    assert "learned_head_skipped" not in full.metrics()
    np.testing.assert_array_equal(lean.rho, full.rho)  # the per-method check is unchanged
    assert lean.cascade == full.cascade


def _write_quality(study, rows):
    frame = pd.DataFrame(rows, columns=["trial_id", "method", "metric", "mean", "std", "n"])
    write_frame(frame, explain_dir(study) / "quality.parquet")


def _method(trial, method, head, accuracy_low):
    """Quality rows of one method; ``head`` None: the job left the head-only score out."""
    accuracy = (
        [
            (trial, method, "heldout_balanced_accuracy", accuracy_low + 0.05, 0, 300),
            (trial, method, "heldout_balanced_accuracy_low", accuracy_low, 0, 300),
            (trial, method, "chance_balanced_accuracy", 0.5, 0, 1),
        ]
        if accuracy_low is not None
        else []
    )
    return accuracy + [
        (trial, method, "sanity_rho", 0.1, 0, 32),
        (trial, method, "sanity_rho_low", 0.05, 0, 32),
        (trial, method, "sanity_rho_high", 0.15, 0, 32),
        (trial, method, "sanity_threshold", 0.66, 0, 32),
        (trial, method, "sanity_verdict", 1.0, 0, 32),
        (
            trial,
            method,
            *(("learned_head_skipped", 1.0) if head is None else ("learned_head_rho", head)),
            0,
            32,
        ),
        (trial, method, "deletion_auc", 0.2, 0, 32),
        (trial, method, "insertion_auc", 0.9, 0, 32),
    ]


def test_verdict_table_flags_the_untrained_trial(tmp_path):
    rows = _method("good", "gradcam", 0.95, 0.9) + _method("good", "saliency", 0.85, 0.9)
    # no held-out accuracy (e.g. regression): the head-only score decides
    rows += _method("fresh", "gradcam", 0.15, None) + _method("fresh", "saliency", 0.25, None)
    rows += _method("chance", "gradcam", 0.95, 0.45)
    rows += _method("lowhead", "gradcam", 0.3, 0.9)  # above chance: learned
    _write_quality(tmp_path, rows)
    models = model_verdicts(pd.read_parquet(explain_dir(tmp_path) / "quality.parquet"))
    assert {k: v.verdict for k, v in models.items()} == {
        "good": "learned",
        "fresh": "untrained",
        "chance": "untrained",
        "lowhead": "learned",
    }
    assert models["fresh"].head == pytest.approx(0.2)
    table = sanity_table(tmp_path).set_index(["trial_id", "method"])
    assert table.loc[("good", "gradcam"), "verdict"] == "passed"
    fresh = table.loc[("fresh", "gradcam")]
    assert fresh["verdict"] == "untrained"
    assert fresh["method_verdict"] == "passed"
    assert describe(fresh) == (
        "untrained model (head-only randomisation |rho| 0.20 < 0.58); "
        "method check: passed (rho 0.10 [0.05, 0.15] < 0.66)"
    )
    assert "model looks untrained" in fresh["meaning"]
    text = format_quality(tmp_path)
    assert "UNTRAINED: fresh gradcam, fresh saliency, chance gradcam" in text
    assert "model fresh: untrained (head-only randomisation |rho| 0.20 < 0.58)" in text
    assert (
        "model good: learned (held-out balanced accuracy 0.95 > chance 0.50; "
        "head-only randomisation |rho| 0.90)"
    ) in text
    # the dashboard's per-trial list starts with the model verdict
    from cytotune.dashboard.pages import sanity as page

    rows = sanity_table(tmp_path)
    fresh_rows = {r["method"]: r for r in rows[rows.trial_id == "fresh"].to_dict("records")}
    note = page.trial_list(fresh_rows).children[0].to_plotly_json()["props"]
    assert note["data-model"] == "untrained"
    scores = trial_scores(tmp_path)
    assert scores.loc["good", "explain_sanity"] == 1.0
    assert scores.loc["fresh", "explain_sanity"] == 0.0
    assert scores.loc["fresh", "explain_score"] == 0


def test_a_head_score_left_out_reads_as_not_run_where_the_held_out_accuracy_decides(tmp_path):
    rows = _method("good", "gradcam", None, 0.9) + _method("good", "saliency", None, 0.9)
    rows += _method("chance", "gradcam", None, 0.45)
    _write_quality(tmp_path, rows)
    models = model_verdicts(pd.read_parquet(explain_dir(tmp_path) / "quality.parquet"))
    assert models["good"].verdict == "learned"
    assert np.isnan(models["good"].head)
    assert models["chance"].verdict == "untrained"
    text = format_quality(tmp_path)  # the CLI summary; the dashboard and the card read the same
    assert (
        "model good: learned (held-out balanced accuracy 0.95 > chance 0.50; "
        "head-only check not run: the held-out accuracy decides)"
    ) in text
    table = sanity_table(tmp_path).set_index(["trial_id", "method"])
    assert "head-only check not run" in table.loc[("good", "gradcam"), "model_reason"]
    assert "|rho|" not in text


def test_trained_small_cnn_is_learned_and_its_untrained_copy_is_flagged():
    """Metastasis task (engine/synth), 3-block CNN trained 10 epochs (~12 s of CPU)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
    from cytotune.search_spaces.models import create_model
    from sanity_calibration import attribute_fn, data, held_out_accuracy, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only contend
    try:
        verdicts = _trained_and_untrained(
            attribute_fn, create_model, data, held_out_accuracy, train
        )
    finally:
        torch.set_num_threads(threads)
    assert verdicts["trained"].verdict == "learned", verdicts["trained"]
    assert verdicts["untrained"].verdict == "untrained", verdicts["untrained"]
    assert verdicts["untrained"].head < HEAD_THRESHOLD < verdicts["trained"].head


def _trained_and_untrained(attribute_fn, create_model, data, held_out_accuracy, train):
    torch.manual_seed(12)
    d = data("metastasis", n=400, size=32, seed=1)
    model = create_model(
        "small_cnn",
        in_chans=3,
        task="binary",
        num_outputs=2,
        conv_layers=3,
        filters=16,
        dense_units=32,
        dropout=0.0,
    ).eval()
    untrained = randomize_weights(model, seed=1000, mode="full").eval()
    train(model, d, epochs=10, seed=3)
    cut = d["cut"]
    x, cells = d["x"][cut : cut + 16], d["masks"][cut : cut + 16]
    config = SanityConfig(seeds=2, cascade=(), n_boot=200)
    verdicts = {}
    for name, m in (("trained", model), ("untrained", untrained)):
        with torch.no_grad():
            target = m(x).argmax(1)
        heads = {
            method: sanity_check(attribute_fn(method, x, target), m, config, masks=cells).head_mean
            for method in ("gradcam", "saliency")
        }
        accuracy, low, _ = held_out_accuracy(m, d)
        verdicts[name] = model_verdict(heads, accuracy, low, chance=0.5)
    return verdicts
