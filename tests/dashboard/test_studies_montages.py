"""The Studies page shows the detection montages of a dataset built by `cytotune crop`, and
nothing more for other datasets; the montages are served from the dataset, not copied."""

from __future__ import annotations

import urllib.parse

import pytest
from cytotune.dashboard.app import Context, create_app
from cytotune.dashboard.data import Catalog
from cytotune.dashboard.pages import studies
from cytotune.engine.crop import CropOptions, crop_fields
from PIL import Image

from tests.engine.crop.conftest import disc_field

from .factory import make_dataset, make_study


def images(component) -> list:
    """Every html.Img in a Dash component tree."""
    found = [component] if type(component).__name__ == "Img" else []
    children = getattr(component, "children", None)
    if children is None:
        return found
    for child in children if isinstance(children, (list, tuple)) else [children]:
        found += images(child)
    return found


@pytest.fixture(scope="module")
def crop_dataset(tmp_path_factory):
    fields = tmp_path_factory.mktemp("fields")
    for i in range(3):
        image, _ = disc_field((80, 80), [(25, 25), (55, 55), (40, 3)], 6, seed=i)
        Image.fromarray(image).save(fields / f"field{i}.png")
    out = tmp_path_factory.mktemp("datasets") / "nuclei"
    crop_fields(fields, out, CropOptions(size=24, montages=2, workers=1), progress=False)
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory, crop_dataset):
    root = tmp_path_factory.mktemp("studies")
    make_study(root, "cropped", n_trials=3, dataset=crop_dataset, explain=False)
    make_study(root, "plain", n_trials=3, dataset=make_dataset(root / "plain-ds"), explain=False)
    return root


def page_images(root) -> list:
    return images(studies.layout(Context(Catalog(root)), None, {}))


def test_a_crop_built_dataset_shows_its_montages(root, crop_dataset):
    shown = page_images(root)
    written = sorted(p.name for p in (crop_dataset / "crop" / "montage").glob("*.png"))
    assert written == ["field0.png", "field1.png"]
    queries = [urllib.parse.parse_qs(urllib.parse.urlsplit(img.src).query) for img in shown]
    assert [q["name"][0] for q in queries] == written
    assert {q["study"][0] for q in queries} == {"cropped"}


def test_the_montage_route_serves_the_dataset_file_and_nothing_else(root, crop_dataset):
    client = create_app(str(root)).server.test_client()
    src = page_images(root)[0].src
    response = client.get(src)
    assert response.status_code == 200
    assert response.data == (crop_dataset / "crop" / "montage" / "field0.png").read_bytes()
    for query in (
        "study=cropped&name=../manifest.json",
        "study=cropped&name=field9.png",
        "study=plain&name=field0.png",
        "study=nosuch&name=field0.png",
        "name=field0.png",
    ):
        assert client.get(f"/montage?{query}").status_code == 404, query


def test_a_plain_dataset_shows_no_montage(tmp_path):
    dataset = make_dataset(tmp_path / "ds")
    # A PNG where crop would put one does not make a dataset crop-built: its manifest says so.
    (dataset / "crop" / "montage").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(dataset / "crop" / "montage" / "field0.png")
    make_study(tmp_path, "plain", n_trials=3, dataset=dataset, explain=False)
    assert page_images(tmp_path) == []
