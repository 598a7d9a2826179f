"""End to end: synthetic whole fields -> `cytotune crop` -> the cells come back with their labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
from cytotune.engine.cli import main
from cytotune.engine.data import CellDataset
from cytotune.engine.synth.fields import render_fields, write_fields

OPTIONS = {"plates": 1, "wells_per_class": 2, "fields_per_well": 1}


def test_fields_tile_the_layout_cells():
    fields = render_fields("metastasis", grid=3, size=48, **OPTIONS)
    assert len(fields) == 4  # 2 classes x 1 plate x 2 wells x 1 field
    for f in fields:
        assert f.image.shape == (3, 144, 144)
        assert f.truth.max() == 9
        assert len(f.cell_ids) == 9
        assert f.field_id.startswith(f.well)
        for k, (cy, cx) in enumerate(f.centroids, start=1):
            assert f.truth[int(round(cy)), int(round(cx))] == k  # centroid inside its cell
    assert sorted(f.label for f in fields) == ["metastasizing"] * 2 + ["normal"] * 2


def test_crop_recovers_the_cells_with_inherited_labels(tmp_path):
    index = write_fields("metastasis", tmp_path / "fields", grid=3, size=64, **OPTIONS)
    out = tmp_path / "ds"
    argv = ["crop", str(index), "--out", str(out), "--channels", "dna,actin,vimentin",
            "--channel", "dna", "--size", "64", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    ds = CellDataset(out)
    meta = ds.metadata()
    truth_index = pd.read_csv(index)
    found = 0
    for row in truth_index.itertuples():
        import tifffile

        truth = tifffile.imread(tmp_path / "fields" / row.truth).astype(np.int32)
        cells = meta[meta["field"] == row.field]
        assert (cells["label"] == row.label).all()  # every crop inherits its field's label
        assert (cells["well"] == row.well).all()
        assert (cells["plate"] == row.plate).all()
        # A true cell is recovered when exactly one crop is centred inside it.
        hits = truth[
            cells["centroid_y"].round().astype(int), cells["centroid_x"].round().astype(int)
        ]
        ids, counts = np.unique(hits[hits > 0], return_counts=True)
        found += int((counts == 1).sum())
    recall = found / (9 * len(truth_index))
    assert recall >= 0.95, recall
    assert len(ds) <= 9 * len(truth_index) + 2  # few spurious detections
    assert ds.manifest.class_counts.keys() == {"normal", "metastasizing"}
