"""`cytotune crop --cell-channel`: nuclei grown into whole cells, crops centred on the cell body."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from cytotune.engine.cli import main
from cytotune.engine.crop import CropOptions, crop_fields
from cytotune.engine.crop.cells import grow_cells
from cytotune.engine.crop.classical import ClassicalFinder
from cytotune.engine.crop.extract import cut_cells
from cytotune.engine.data import CellDataset
from scipy import ndimage as ndi

SHAPE = (128, 128)
# (cell centre, nucleus offset from it): nuclei sit off-centre so the two centroids differ.
CELLS = [((30, 30), (3, -4)), ((32, 92), (-4, 3)), ((92, 38), (2, 5)), ((94, 96), (-3, -3))]
EDGE_CELL = ((64, 10), (0, 6))  # its body touches the left edge, its nucleus does not
CELL_RADIUS, NUCLEUS_RADIUS, SIZE = 12, 5, 32


def drawn_field(cells=CELLS, seed=0):
    """(dna, actin) uint16 field with nucleus discs inside larger cell discs, and both truths."""
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    nuclei = np.zeros(SHAPE, dtype=np.int32)
    bodies = np.zeros(SHAPE, dtype=np.int32)
    rim = np.zeros(SHAPE, dtype=bool)
    for k, ((cy, cx), (dy, dx)) in enumerate(cells, start=1):
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        bodies[r2 <= CELL_RADIUS**2] = k
        rim |= (r2 <= CELL_RADIUS**2) & (r2 > (CELL_RADIUS - 2) ** 2)
        nuclei[(yy - cy - dy) ** 2 + (xx - cx - dx) ** 2 <= NUCLEUS_RADIUS**2] = k
    rng = np.random.default_rng(seed)
    dna = np.where(nuclei > 0, 30000, 800) + rng.normal(0, 100, SHAPE)
    # Actin: a dim cytoplasm with a bright cortical rim, as in real (and synthetic) cells.
    actin = np.where(bodies > 0, 4000, 700) + 6000 * rim + rng.normal(0, 100, SHAPE)
    image = np.stack([dna, actin]).clip(0, 65535).astype(np.uint16)  # (2, H, W)
    return image, nuclei, bodies


def test_grown_bodies_hold_their_nuclei_and_match_the_drawn_cells():
    image, _, truth = drawn_field()
    nuclei = ClassicalFinder().find(image[0])
    assert nuclei.max() == len(CELLS)
    bodies = grow_cells(image[1], nuclei)
    for k in range(1, len(CELLS) + 1):
        body = bodies == k
        assert body[nuclei == k].all()  # contains its nucleus
        drawn = truth == np.bincount(truth[nuclei == k]).argmax()
        assert abs(body.sum() / drawn.sum() - 1) < 0.15, (k, body.sum(), drawn.sum())
        assert (body & drawn).sum() / (body | drawn).sum() > 0.85
    assert (bodies[truth == 0] == 0).mean() > 0.99  # the background stays background


def test_grow_cells_checks_shapes_and_keeps_empty_fields_empty():
    with pytest.raises(ValueError, match="same 2-D shape"):
        grow_cells(np.zeros((8, 8)), np.zeros((8, 9), dtype=np.int32))
    assert not grow_cells(np.ones((8, 8)), np.zeros((8, 8), dtype=np.int32)).any()


def test_crops_are_centred_on_the_body_and_the_rules_apply_to_it():
    image, _, _ = drawn_field(CELLS + [EDGE_CELL])
    nuclei = ClassicalFinder().find(image[0])
    bodies = grow_cells(image[1], nuclei)
    cuts = cut_cells(image, nuclei, SIZE, bodies=bodies)
    plain = {c.index: c for c in cut_cells(image, nuclei, SIZE)}
    assert len(cuts) == len(CELLS) + 1
    for cut in cuts:
        body = bodies == cut.index
        cy, cx = ndi.center_of_mass(body)
        meta = cut.metadata
        assert (meta["body_centroid_y"], meta["body_centroid_x"]) == (round(cy, 2), round(cx, 2))
        assert meta["body_area"] == body.sum()
        # The nucleus columns are those of the nuclei-only crop.
        assert {k: meta[k] for k in plain[cut.index].metadata} == plain[cut.index].metadata
        if plain[cut.index].centroid[1] > 14 and cx < CELL_RADIUS:  # the edge cell
            assert plain[cut.index].reason is None
            assert cut.reason == "touches the field edge"
            continue
        assert cut.reason is None
        top, left = int(round(cy)) - SIZE // 2, int(round(cx)) - SIZE // 2
        assert np.array_equal(cut.image, image[:, top : top + SIZE, left : left + SIZE])
        assert np.array_equal(cut.mask, body[top : top + SIZE, left : left + SIZE])
        my, mx = ndi.center_of_mass(cut.mask)
        assert np.allclose((my + top, mx + left), (cy, cx))  # the crop's centre is the body's
        assert np.abs(np.subtract((my, mx), SIZE / 2)).max() <= 0.5
    # Too large is judged on the body: every nucleus passes, no body does.
    limit = max(c.area for c in plain.values()) + 1
    cuts = cut_cells(image, nuclei, SIZE, bodies=bodies, max_area=limit)
    assert all(c.reason is not None for c in cuts)
    assert sum(c.reason.startswith("too large") for c in cuts) == len(CELLS)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "fields"
    for k, name in enumerate(("ctrl", "drug")):
        (root / name).mkdir(parents=True)
        for f in range(2):
            image, _, _ = drawn_field(CELLS + [EDGE_CELL], seed=10 * k + f)
            tifffile.imwrite(root / name / f"f{f}.tif", image)
    return root


def crop(source, out, *extra):
    argv = ["crop", str(source), "--out", str(out), "--channels", "dna,actin",
            "--channel", "dna", "--size", str(SIZE), "--quiet", *extra]  # fmt: skip
    assert main(argv) == 0
    return CellDataset(out)


def files(ds):
    return {
        p.relative_to(ds.path): p.read_bytes()
        for p in ds.path.rglob("*")
        if p.is_file() and p.name != "fields.csv"
    }


def test_cli_cell_channel_with_one_and_two_workers(folder, tmp_path, capsys):
    serial = crop(folder, tmp_path / "a" / "ds", "--cell-channel", "actin", "--workers", "1")
    assert "16 cropped of 20 found in 4 fields (4 quarantined)" in capsys.readouterr().out
    pooled = crop(folder, tmp_path / "b" / "ds", "--cell-channel", "actin", "--workers", "2")
    assert files(serial) == files(pooled)
    assert serial.manifest.content_hash == pooled.manifest.content_hash
    meta = serial.metadata()
    assert {"centroid_y", "area", "body_centroid_y", "body_box_x1", "body_area"} <= set(meta)
    assert (meta["body_area"] > 2 * meta["area"]).all()
    masks = serial.masks()
    assert masks[:, SIZE // 2, SIZE // 2].all()
    assert np.allclose(masks.sum(axis=(1, 2)), meta["body_area"])  # the whole body is the mask
    q = serial.quarantine()
    assert set(q["reason"]) == {"touches the field edge"}
    table = pd.read_parquet(serial.path / "crop" / "cells.parquet")
    assert len(table) == 20
    assert "body_area" in table.columns
    provenance = json.loads((serial.path / "manifest.json").read_text())["provenance"]
    assert provenance["options"]["cell_channel"] == "actin"

    # Without the flag: the nuclei dataset, and the same nucleus columns for the same cells.
    plain = crop(folder, tmp_path / "c" / "ds", "--workers", "1")
    pm = plain.metadata()
    assert not any(c.startswith("body_") for c in pm.columns)
    assert (
        "cell_channel"
        not in json.loads((plain.path / "manifest.json").read_text())["provenance"]["options"]
    )
    shared = pm[pm["cell_id"].isin(meta["cell_id"])].reset_index(drop=True)
    assert len(shared) == 16
    assert shared[list(pm.columns)].equals(meta[list(pm.columns)])
    # The Python API with the option left at None writes the CLI's bytes.
    crop_fields(folder, tmp_path / "d" / "ds", CropOptions(
        size=SIZE, channel="dna", channel_names=("dna", "actin"), workers=1, cell_channel=None,
    ), progress=False)  # fmt: skip
    assert files(CellDataset(tmp_path / "d" / "ds")) == files(plain)
    assert CellDataset(tmp_path / "d" / "ds").manifest.content_hash == plain.manifest.content_hash


def test_an_unknown_cell_channel_is_named(folder, tmp_path, capsys):
    argv = ["crop", str(folder), "--out", str(tmp_path / "ds"), "--channels", "dna,actin",
            "--channel", "dna", "--cell-channel", "tubulin", "--quiet", "--workers", "1"]  # fmt: skip
    assert main(argv) == 2
    assert "--cell-channel: channel 'tubulin' is not one of" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--cell-channel"):
        CropOptions(cell_channel=" ")
