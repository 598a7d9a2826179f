"""``loader: auto`` reads a dataset that fits in memory inside each trial and streams a larger one
through Ray Data (engine/search/study.py)."""

from __future__ import annotations

import pytest
from cytotune.engine.data import CellDataset
from cytotune.engine.search import study as study_module
from cytotune.engine.search.study import StudyConfig, decoded_bytes
from cytotune.engine.synth import write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("loader-choice") / "d"
    write_dataset("metastasis", path, 40, size=16, seed=0, progress=False)
    return path


def test_decoded_bytes_is_the_size_of_the_decoded_crops(dataset):
    assert decoded_bytes(str(dataset)) == CellDataset(dataset).images().nbytes
    assert decoded_bytes(str(dataset / "missing")) is None


def test_auto_picks_inprocess_when_it_fits_and_ray_data_when_not(dataset, monkeypatch):
    study = StudyConfig(name="s", dataset=str(dataset))
    assert study.effective_loader == "inprocess"
    monkeypatch.setattr(study_module, "INPROCESS_MAX_BYTES", decoded_bytes(str(dataset)) - 1)
    assert study.effective_loader == "ray"
    unreadable = StudyConfig(name="s", dataset=str(dataset / "missing"))
    assert unreadable.effective_loader == "ray"


def test_an_explicit_loader_wins(dataset):
    assert StudyConfig(name="s", dataset=str(dataset), loader="ray").effective_loader == "ray"
    chosen = StudyConfig(name="s", dataset=str(dataset), train={"loader": "ray"})
    assert chosen.effective_loader == "ray"
