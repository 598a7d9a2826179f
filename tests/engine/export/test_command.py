"""``cytotune pull`` end to end: ranks, --retrain-full on every cell, the model card, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cytotune.engine.cli import main
from cytotune.engine.data import CellDataset
from cytotune.engine.export.source import ranked_trials, select_trial
from cytotune.engine.search.store import StudyStore

from cytotune import engine

from .conftest import trial_folds


def test_rank_follows_the_leaderboard(cls_study):
    board = ranked_trials(StudyStore(str(cls_study)), ("balanced_accuracy", "max"))
    scores = board["val/balanced_accuracy"].to_numpy()
    assert (np.diff(scores) <= 0).all()
    for rank in (1, 3):
        source = select_trial(cls_study, rank=rank)
        assert source.trial_id == board["trial_id"].iloc[rank - 1]
        assert source.rank == rank
    with pytest.raises(ValueError, match="--rank 9 is out of range: study has 5 trials"):
        select_trial(cls_study, rank=9)
    with pytest.raises(ValueError, match="trial 'smal_cnn' is not in study.*small_cnn"):
        select_trial(cls_study, trial_id="smal_cnn")


def test_retrain_full_trains_one_model_on_every_cell(cls_study, cls_dataset, tmp_path, capsys):
    out = tmp_path / "full"
    code = main(["pull", "--study", str(cls_study), "--trial", "small_cnn", "--retrain-full",
                 "--epochs", "2", "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "retrain epoch 2/2" in capsys.readouterr().out
    manifest = json.loads((out / "bundle.json").read_text())
    prov = json.loads((out / "provenance.json").read_text())
    assert manifest["kind"] == "retrained"
    assert manifest["members"] == 1
    assert prov["retrain"]["cells"] == len(CellDataset(cls_dataset)) == 160
    assert prov["retrain"]["epochs"] == 2
    assert np.isfinite(prov["retrain"]["final_train_loss"])
    # New weights: neither fold model's, same architecture.
    full = torch.load(out / "weights/member_0.pt", weights_only=True)
    for fold in trial_folds(cls_study, "small_cnn"):
        fold_state = torch.load(fold / "model.pt", weights_only=True)
        assert full.keys() == fold_state.keys()
        assert any(not torch.equal(full[k], fold_state[k]) for k in full)
    card = (out / "README.md").read_text()
    assert "retrained on every cell" in card
    assert "no held-out data is left" in card
    bundle = engine.load_bundle(out)
    probs = bundle.predict(cls_dataset)[["p(metastasizing)", "p(normal)"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_model_card_has_contract_metrics_and_provenance(cls_study, tmp_path, capsys):
    out = tmp_path / "card"
    assert main(["pull", "--study", str(cls_study), "--rank", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "torchscript  model.torchscript.pt trace" in printed
    assert "README.md" in printed
    card = (out / "README.md").read_text()
    source = select_trial(cls_study, rank=1)
    mean = source.trial["val/balanced_accuracy"]
    assert f"cross-validated balanced_accuracy {mean:.4f}" in card
    for section in ("## Input", "## Output", "## Cross-validation", "## Explanations",
                    "## Formats", "## Provenance"):  # fmt: skip
        assert section in card
    assert "| 0 | dna |" in card
    assert "| 1 | normal |" in card
    assert "The explain job has not run for this study" in card
    assert "torch.jit.load" in card
    metrics = json.loads((out / "metrics.json").read_text())
    for row in metrics["folds"]:
        assert f"| {row['fold']} | {row['n_val']} | {row['balanced_accuracy']:.4f} |" in card


def test_command_errors_name_the_fix(cls_study, tmp_path, capsys):
    cases = [
        (["pull", "--study", str(cls_study)], "--out BUNDLE_DIR is required"),
        (["pull", "--out", str(tmp_path / "x")], "--study DIR is required"),
        (["pull", "--study", str(tmp_path), "--out", str(tmp_path / "x")], "not a cytotune study"),
        (
            ["pull", "--study", str(cls_study), "--format", "onx", "--out", str(tmp_path / "x")],
            "unknown bundle format 'onx' (did you mean 'onnx'?)",
        ),  # fmt: skip
        (
            ["pull", "--study", str(cls_study), "--promote", "champion", "--alias", "x"],
            "takes --trial ID or --rank N",
        ),  # fmt: skip
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        assert words in capsys.readouterr().err, argv
    assert not (tmp_path / "x").exists()


def test_checkpoint_is_found_again_when_the_study_moved(cls_study):
    from cytotune.engine.export.source import resolve_checkpoint

    row = {"trial_id": "small_cnn", "status": "completed"}
    old = "/gone/elsewhere/export-test/tune/trial_small_cnn/checkpoint_000000"
    found = resolve_checkpoint(cls_study, {**row, "checkpoint": old})
    assert found == cls_study / "tune/trial_small_cnn/checkpoint_000000"
    assert found.is_dir()
    with pytest.raises(FileNotFoundError, match="was the study directory copied without tune/"):
        resolve_checkpoint(cls_study, {**row, "checkpoint": "/gone/tune/trial_x/checkpoint_0"})
    with pytest.raises(ValueError, match="has no checkpoint"):
        resolve_checkpoint(cls_study, {**row, "checkpoint": None})
