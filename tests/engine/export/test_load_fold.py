"""One loader of fold checkpoints (issue 17): model, normalisation and mask input together."""

from __future__ import annotations

import inspect
import json

import numpy as np
import torch
from cytotune.engine.train.checkpoint import load_fold

from .conftest import raw_crops, reference_outputs, trial_folds


def test_load_fold_matches_the_checkpoints_own_contract(cls_study, cls_dataset):
    pixels, mask = raw_crops(cls_dataset)
    for family in ("small_cnn", "protopnet"):
        directory = trial_folds(cls_study, family)[0]
        fold = load_fold(directory)
        norm = fold.config["data"]["normalization"]
        expected = (pixels - np.asarray(norm["offset"])[None, :, None, None]) / np.asarray(
            norm["scale"]
        )[None, :, None, None]
        np.testing.assert_allclose(fold.normalize(pixels).numpy(), expected, rtol=1e-5, atol=1e-5)
        assert fold.takes_mask == ("mask" in inspect.signature(fold.model.forward).parameters)
        kwargs = {"mask": torch.from_numpy(mask)} if fold.takes_mask else {}
        with torch.no_grad():
            probs = torch.softmax(fold.model(fold.normalize(pixels), **kwargs), 1).numpy()
        reference = reference_outputs([directory], pixels, mask if fold.takes_mask else None)
        np.testing.assert_allclose(probs, reference, rtol=1e-4, atol=1e-5)


def test_data_contract_is_typed_and_round_trips(cls_study, cls_dataset):
    import json

    import pytest
    from cytotune.engine.data import CellDataset
    from cytotune.engine.train.contract import DataContract

    directory = trial_folds(cls_study, "small_cnn")[0]
    stored = json.loads((directory / "config.json").read_text())["data"]
    contract = load_fold(directory).contract
    assert contract.to_dict() == stored  # the writer's dict, field for field
    manifest = CellDataset(cls_dataset).manifest
    assert contract == DataContract.of(manifest, contract.normalization.method)
    assert contract.channel_names == tuple(manifest.channel_names)
    assert contract.output_names == list(manifest.classes)
    with pytest.raises(ValueError, match="lacks dtype, normalization.scale"):
        broken = {k: v for k, v in stored.items() if k != "dtype"}
        DataContract.from_dict({**broken, "normalization": {"method": "zscore", "offset": [0]}})
    with pytest.raises(ValueError, match="inconsistent.*3 offsets"):
        norm = {**stored["normalization"], "offset": [0.0, 0.0, 0.0]}
        DataContract.from_dict({**stored, "normalization": norm, "shape": [4, 32, 32]})


def test_fold_models_built_empty_equal_the_template_copies(cls_study, cls_dataset):
    """Every family loads through the meta-device build (no template copy) and predicts as the
    template copy holding the same weights does."""
    from cytotune.engine.train import checkpoint
    from cytotune.search_spaces.models import list_models

    pixels, mask = raw_crops(cls_dataset)
    for family in list_models():
        directory = trial_folds(cls_study, family)[0]
        fold = load_fold(directory)
        config = checkpoint.model_config_of(fold.config)
        key = json.dumps(config.to_dict(), sort_keys=True, default=str)
        assert checkpoint._BUILDS_EMPTY[key], family
        template = checkpoint.built_model(config)
        template.load_state_dict(
            torch.load(directory / checkpoint.MODEL_FILE, map_location="cpu", weights_only=True)
        )
        checkpoint.load_model_extra_state(template, fold.config.get("model_extra", {}))
        template.eval()
        kwargs = {"mask": torch.from_numpy(mask)} if fold.takes_mask else {}
        x = fold.normalize(pixels)
        with torch.no_grad():
            torch.testing.assert_close(fold.model(x, **kwargs), template(x, **kwargs), msg=family)


def test_a_model_with_tensors_outside_its_state_is_built_from_the_template(cls_study, monkeypatch):
    """A buffer left out of the state dict stays on the meta device in an empty build: such a
    family gets the template copy, with the buffer as built."""
    from cytotune.engine.train import checkpoint

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)
            self.register_buffer("factor", torch.full((2,), 3.0), persistent=False)

        def forward(self, x):
            return self.linear(x) * self.factor

    config = checkpoint.model_config_of(load_fold(trial_folds(cls_study, "small_cnn")[0]).config)
    monkeypatch.setattr(checkpoint, "create_model", lambda _config: Scaled())
    monkeypatch.setattr(checkpoint, "_BUILT", {})
    monkeypatch.setattr(checkpoint, "_BUILDS_EMPTY", {})
    state = Scaled().state_dict()
    model = checkpoint.model_with_state(config, state)
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    assert model.factor.tolist() == [3.0, 3.0]
    torch.testing.assert_close(model.linear.weight, state["linear.weight"])
    assert list(checkpoint._BUILDS_EMPTY.values()) == [False]
