"""`cytotune crop` end to end on small written fields: rows, groups, labels, quarantine, montage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from cytotune.engine.cli import main
from cytotune.engine.data import CellDataset
from PIL import Image

from .conftest import disc_field


def two_channel_field(centres, seed):
    dna, truth = disc_field(
        (96, 96), centres, 7, value=30000, background=800, dtype=np.uint16, seed=seed
    )
    actin = (dna // 2 + 100).astype(np.uint16)
    return np.stack([dna, actin]), truth


@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / "fields"
    for k, name in enumerate(("ctrl", "drug")):
        (root / name).mkdir(parents=True)
        for f in range(2):
            # Three inner cells and one cut by the left edge.
            image, _ = two_channel_field([(25, 30), (30, 70), (70, 50), (50, 3)], seed=10 * k + f)
            tifffile.imwrite(root / name / f"f{f}.tif", image)
    return root


def test_folder_of_class_subfolders(class_folder, tmp_path, capsys):
    out = tmp_path / "ds"
    argv = ["crop", str(class_folder), "--out", str(out), "--channels", "dna,actin",
            "--channel", "dna", "--size", "32", "--clean", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "12 cropped of 16 found in 4 fields (4 quarantined)" in printed
    assert "touches the field edge" in printed
    ds = CellDataset(out)
    m = ds.manifest
    assert (m.shape, m.dtype, m.channel_names) == ([2, 32, 32], "uint16", ["dna", "actin"])
    assert m.class_counts == {"ctrl": 6, "drug": 6}
    assert m.num_quarantined == 4
    meta = ds.metadata()
    assert set(meta["field"]) == {"ctrl/f0", "ctrl/f1", "drug/f0", "drug/f1"}
    assert (meta["label"] == meta["field"].str.split("/").str[0]).all()
    assert {"centroid_y", "box_x0", "area"} <= set(meta.columns)
    images, masks = ds.images(), ds.masks()
    assert (images * (1 - masks[:, None]) == 0).all()  # --clean
    assert masks[:, 16, 16].all()  # centred on the cell
    q = ds.quarantine()
    assert len(q) == 4
    assert set(q["reason"]) == {"touches the field edge"}
    cells = pd.read_parquet(out / "crop" / "cells.parquet")
    assert (cells["status"] == "quarantined").sum() == 4
    assert len(cells) == 16
    assert len(list((out / "crop" / "montage").glob("*.png"))) == 4
    assert main(argv) == 2  # exists, no --overwrite: refused with a message
    assert "--overwrite" in capsys.readouterr().err


def test_index_with_wells_labels_and_a_broken_field(tmp_path):
    rows = []
    for i, (well, field, label) in enumerate(
        [("A01", "1", "ctrl"), ("A01", "2", ""), ("B01", "1", "drug")]
    ):
        image, _ = disc_field((80, 80), [(25, 25), (55, 55)], 6, seed=i)
        Image.fromarray(image).save(tmp_path / f"w{i}.png")
        rows.append(
            {"path": f"w{i}.png", "label": label, "plate": "P1", "well": well, "field": field}
        )
    (tmp_path / "bad.png").write_bytes(b"not a png")
    rows.append({"path": "bad.png", "label": "drug", "plate": "P1", "well": "B01", "field": "2"})
    pd.DataFrame(rows).to_csv(tmp_path / "index.csv", index=False)
    out = tmp_path / "ds"
    assert (
        main(["crop", str(tmp_path / "index.csv"), "--out", str(out), "--size", "24", "--quiet"])
        == 0
    )
    ds = CellDataset(out)
    meta = ds.metadata()
    assert ds.manifest.group_columns == ["plate", "well", "field"]
    assert sorted(set(meta["field"])) == ["P1/A01/1", "P1/A01/2", "P1/B01/1"]
    # The unlabelled field inherits its well's label.
    assert (meta.loc[meta["well"] == "A01", "label"] == "ctrl").all()
    assert ds.manifest.class_counts == {"ctrl": 4, "drug": 2}
    q = ds.quarantine()
    assert list(q["cell_id"]) == ["P1/B01/2"]
    assert q["reason"][0].startswith("field unreadable")


def test_bad_options_are_named(tmp_path, capsys):
    assert main(["crop", str(tmp_path), "--out", str(tmp_path / "x"), "--size", "2"]) == 2
    assert "--size" in capsys.readouterr().err
    assert main(["crop", str(tmp_path), "--out", str(tmp_path / "x"), "--finder", "learned"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
