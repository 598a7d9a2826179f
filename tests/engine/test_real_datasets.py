"""The two real datasets in ../shared/datasets ingest completely and pixel-exactly (skipped when absent)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from cytotune.engine.data import CellDataset
from cytotune.engine.data.folds import make_folds
from cytotune.engine.data.ingest import IngestOptions, ingest
from PIL import Image

from tests.conftest import shared_dataset


def test_mitocheck_ingests_completely_and_pixel_exact(tmp_path):
    index = shared_dataset("mitocheck")
    report = ingest(
        index,
        tmp_path / "mitocheck",
        IngestOptions(channel_names=("chromatin",), workers=2),
        progress=False,
    )
    m = report.manifest
    assert (m.num_rows, m.num_quarantined, m.shape, m.dtype, len(m.label_map)) == (
        3277,
        0,
        [1, 64, 64],
        "uint8",
        16,
    )
    assert m.class_counts["Polylobed"] == 473
    assert m.class_counts["Folded"] == 58
    ds = CellDataset(tmp_path / "mitocheck")
    source = pd.read_csv(index)
    meta = ds.metadata().set_index("source")
    images = ds.images()
    for row in source.itertuples():
        i = meta.index.get_loc(row.path)
        reference = np.asarray(Image.open(index.parent / row.path))
        np.testing.assert_array_equal(images[i, 0], reference)
        assert meta.iloc[i]["label"] == row.label
        assert meta.iloc[i]["group"] == row.group
    folds = make_folds(ds, k=5, group="group")
    assert folds.audit["total_shared_groups"] == 0


def test_bbbc021_ingests_completely_and_pixel_exact(tmp_path):
    index = shared_dataset("bbbc021")
    options = IngestOptions(channel_names=("dna", "tubulin", "actin"), workers=2)
    report = ingest(index, tmp_path / "bbbc021", options, progress=False)
    m = report.manifest
    assert (m.num_rows, m.num_quarantined, m.shape, m.dtype) == (7774, 0, [3, 68, 68], "uint16")
    assert m.class_counts == {"DMSO": 5318, "Protein synthesis": 2456}
    ds = CellDataset(tmp_path / "bbbc021")
    meta = ds.metadata().set_index("source")
    images = ds.images()
    for row in pd.read_csv(index).itertuples():
        i = meta.index.get_loc(row.path)
        np.testing.assert_array_equal(
            images[i], np.moveaxis(np.load(index.parent / row.path), -1, 0)
        )
        assert meta.iloc[i]["well"] == row.well
    again = ingest(index, tmp_path / "again", options, progress=False).manifest
    assert again.content_hash == m.content_hash
    folds = make_folds(ds, k=5, group="group", audit_naive=True)
    assert folds.audit["total_shared_groups"] == 0
    assert (
        folds.audit["naive_per_cell"]["total_shared_groups"] > 0
    )  # per-cell CV leaks fields of view
