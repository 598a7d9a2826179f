"""One loader of fold checkpoints (issue 17): model, normalisation and mask input together."""

from __future__ import annotations

import inspect

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
