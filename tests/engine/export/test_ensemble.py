"""``--ensemble folds``: the bundle's output is the plain mean of the K fold models'
probabilities (classification) or predictions (regression), computed here by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cytotune.engine.data import CellDataset
from cytotune.engine.export import load_bundle
from cytotune.engine.export.pull import best_fold, pull
from cytotune.engine.export.source import cv_metrics, select_trial

from .conftest import raw_crops, reference_outputs, trial_folds

FORMATS = ["state_dict", "torchscript", "torch_export", "onnx"]
pytest.importorskip("onnxruntime", reason="onnx export tests need onnxruntime (the dev extra)")


def _by_hand(fold_dirs, pixels: np.ndarray, classification: bool) -> np.ndarray:
    """Mean over folds, written out without the engine's helpers beyond load_model."""
    from cytotune.engine.train import load_model

    total = None
    for directory in fold_dirs:
        model, config = load_model(directory)
        norm = config["data"]["normalization"]
        x = torch.tensor(pixels, dtype=torch.float64)
        for c in range(x.shape[1]):
            x[:, c] = (x[:, c] - norm["offset"][c]) / norm["scale"][c]
        with torch.no_grad():
            out = model(x.float()).double()
        if classification:
            out = out.exp() / out.exp().sum(1, keepdim=True)
        total = out if total is None else total + out
    return (total / len(fold_dirs)).numpy()


def test_classification_ensemble_averages_fold_probabilities(cls_study, cls_dataset, tmp_path):
    source = select_trial(cls_study, trial_id="small_cnn")
    path, manifest = pull(source, tmp_path / "ens", ensemble="folds", formats=FORMATS, log=print)
    folds = trial_folds(cls_study, "small_cnn")
    assert manifest["kind"] == "ensemble"
    assert manifest["members"] == len(folds) == 2
    assert "mean of the 2 members' probabilities" in manifest["output"]["meaning"]
    pixels, _ = raw_crops(cls_dataset, n=9)
    want = _by_hand(folds, pixels, classification=True)
    singles = [_by_hand([f], pixels, True) for f in folds]
    assert np.abs(singles[0] - singles[1]).max() > 1e-4  # the folds disagree: a real average
    # Averaging probabilities is not averaging logits: the reference must not be the latter.
    np.testing.assert_allclose(want, reference_outputs(folds, pixels.astype(np.float32)), 1e-5)
    cols = ["p(metastasizing)", "p(normal)"]
    for backend in ("torch", "torchscript", "torch_export", "onnx"):
        got = load_bundle(path, backend=backend).predict(pixels)
        np.testing.assert_allclose(got[cols].to_numpy(), want, atol=1e-5, err_msg=backend)
        assert list(got["prediction"]) == [cols[i][2:-1] for i in want.argmax(1)]
    card = (path / "README.md").read_text()
    assert "averages every fold model (probabilities for classification)" in card


def test_regression_ensemble_averages_fold_predictions(reg_study, tmp_path):
    source = select_trial(reg_study, rank=1)
    path, manifest = pull(source, tmp_path / "reg", ensemble="folds", formats=FORMATS, log=print)
    assert manifest["task"] == "regression"
    assert manifest["output"]["name"] == "values"
    assert manifest["output"]["names"] == ["vimentin", "area"]
    dataset = CellDataset(json.loads((path / "provenance.json").read_text())["dataset"]["path"])
    pixels = dataset.images(np.arange(7))
    want = _by_hand(trial_folds(reg_study, "reg"), pixels, classification=False)
    for backend in ("torch", "torch_export", "onnx"):
        got = load_bundle(path, backend=backend).predict(pixels)
        assert list(got.columns) == ["index", "vimentin", "area"]
        np.testing.assert_allclose(got[["vimentin", "area"]].to_numpy(), want, rtol=1e-4, atol=1e-5)
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["objective"] == {"metric": "r2", "mode": "max"}
    assert {row["fold"] for row in metrics["folds"]} == {0, 1}
    assert "mse" in metrics["folds"][0]


def test_single_fold_is_the_best_validation_fold(cls_study, tmp_path):
    source = select_trial(cls_study, trial_id="backbone")
    metrics = cv_metrics(source)
    scores = {row["fold"]: row["balanced_accuracy"] for row in metrics["folds"]}
    best = max(scores, key=scores.get)
    assert best_fold(metrics, 2) == best
    path, manifest = pull(source, tmp_path / "one", log=print)
    config = json.loads((path / "config.json").read_text())
    assert manifest["kind"] == "single"
    assert config["members"][0]["fold"] == best
    assert config["fold_choice"] == "best validation objective of the folds"
    for key in ("balanced_accuracy", "balanced_accuracy_std"):  # the trial's fold mean and std
        assert metrics["mean"][key] == pytest.approx(source.trial[f"val/{key}"])
    pixels = CellDataset(source.study["dataset"]).images(np.arange(5))
    want = reference_outputs(trial_folds(cls_study, "backbone")[best : best + 1], pixels * 1.0)
    got = load_bundle(path).predict(pixels)[["p(metastasizing)", "p(normal)"]].to_numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_tta_bundle_averages_logits_over_the_eight_dihedral_views(cls_study, cls_dataset, tmp_path):
    """``--tta dihedral``: per member, logits averaged over the 8 flips / quarter turns, then the
    softmax; the same in every exported graph."""
    from cytotune.engine.train import load_model

    source = select_trial(cls_study, trial_id="small_cnn")
    path, manifest = pull(
        source, tmp_path / "tta", fold=0, formats=FORMATS, tta="dihedral", log=print
    )
    assert json.loads((path / "config.json").read_text())["tta"] == "dihedral"
    pixels, _ = raw_crops(cls_dataset, n=5)
    model, config = load_model(trial_folds(cls_study, "small_cnn")[0])
    norm = config["data"]["normalization"]
    x = torch.tensor(pixels, dtype=torch.float32)
    x = (x - torch.tensor(norm["offset"]).view(1, -1, 1, 1)) / torch.tensor(norm["scale"]).view(
        1, -1, 1, 1
    )
    with torch.no_grad():
        views = [torch.rot90(v, k, (2, 3)) for v in (x, x.flip(3)) for k in range(4)]
        logits = torch.stack([model(v) for v in views]).mean(0)
    want = logits.softmax(1).numpy()
    plain = reference_outputs(trial_folds(cls_study, "small_cnn")[:1], pixels.astype(np.float32))
    assert np.abs(want - plain).max() > 1e-4  # the views change the answer: a real test
    cols = ["p(metastasizing)", "p(normal)"]
    for backend in ("torch", "torchscript", "torch_export", "onnx"):
        got = load_bundle(path, backend=backend).predict(pixels)
        np.testing.assert_allclose(got[cols].to_numpy(), want, atol=1e-5, err_msg=backend)


def test_bad_pull_options(cls_study, tmp_path):
    source = select_trial(cls_study, trial_id="small_cnn")
    cases = [
        ({"ensemble": "folds", "retrain": True}, "drop --ensemble"),
        ({"ensemble": "folds", "fold": 1}, "drop --fold"),
        ({"fold": 5}, "out of range"),
        ({"ensemble": "bagging"}, "not one of"),
    ]
    for options, words in cases:
        with pytest.raises(ValueError, match=words):
            pull(source, tmp_path / "x", log=print, **options)
    assert not (tmp_path / "x").exists()
