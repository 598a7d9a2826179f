"""A few real dsb2018 fields: the classical finder scores sensibly and `cytotune crop` runs on them."""

from __future__ import annotations

import numpy as np
import pandas as pd
from cytotune.engine.cli import main
from cytotune.engine.crop import create_finder
from cytotune.engine.crop.fields import read_field, read_truth
from cytotune.engine.crop.metrics import score_field, summarise
from cytotune.engine.data import CellDataset

from tests.conftest import shared_dataset

FIELDS = 4


def test_classical_finder_and_crop_on_real_fields(tmp_path):
    index_path = shared_dataset("dsb2018")
    root = index_path.parent
    ids = list(pd.read_csv(index_path, dtype={"id": str})["id"][:FIELDS])
    finder = create_finder("classical")
    scores = []
    for fid in ids:
        image = read_field(root / "images" / f"{fid}.png")
        scores.append(
            score_field(read_truth(root / "labels" / f"{fid}.png"), finder.find(image[0]))
        )
    summary = summarise(scores)
    # Measured on all 450 fields: F1@0.5 about 0.79, mAP about 0.50 (BENCHMARKS.md).
    assert summary["f1"] > 0.6, summary
    assert summary["map"] > 0.3, summary

    index = tmp_path / "index.csv"
    pd.DataFrame(
        {"path": [str(root / "images" / f"{i}.png") for i in ids], "label": "nuclei"}
    ).to_csv(index, index=False)
    out = tmp_path / "ds"
    assert (
        main(
            ["crop", str(index), "--out", str(out), "--size", "48", "--quiet", "--channels", "dna"]
        )
        == 0
    )
    ds = CellDataset(out)
    found = len(pd.read_parquet(out / "crop" / "cells.parquet"))
    assert len(ds) + ds.manifest.num_quarantined == found == sum(s.n_pred for s in scores)
    assert ds.manifest.has_mask
    assert np.all(ds.masks()[:, 24, 24] <= 1)
