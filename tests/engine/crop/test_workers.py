"""`cytotune crop --workers`: fields computed in worker processes give the serial run's dataset."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import tifffile
from cytotune.engine.cli import main
from cytotune.engine.crop import CropOptions, crop_fields
from cytotune.engine.crop.classical import ClassicalFinder
from cytotune.engine.data import CellDataset

from .conftest import disc_field
from .test_command import two_channel_field


class PidFinder(ClassicalFinder):
    """The classical finder, noting which process searched each field (in ``log``)."""

    def __init__(self, log, **kwargs):
        super().__init__(**kwargs)
        self.log = str(log)

    def find(self, image):
        with open(self.log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        return super().find(image)


class InProcessFinder(PidFinder):
    processes = False


@pytest.fixture
def mixed_folder(tmp_path):
    """Eight fields: six good ones, one unreadable, one with a single channel."""
    root = tmp_path / "fields"
    for k, name in enumerate(("ctrl", "drug")):
        (root / name).mkdir(parents=True)
        for f in range(3):
            centres = [(25, 30), (30, 70), (70, 50), (50, 3), (60 + f, 80)]
            image, _ = two_channel_field(centres, seed=10 * k + f)
            tifffile.imwrite(root / name / f"f{f}.tif", image)
    (root / "ctrl" / "broken.tif").write_bytes(b"not a tiff")
    grey, _ = disc_field((96, 96), [(40, 40)], 7, value=30000, background=800, dtype=np.uint16)
    tifffile.imwrite(root / "drug" / "grey.tif", grey)
    return root


def crop(source, out, workers):
    argv = ["crop", str(source), "--out", str(out), "--channels", "dna,actin",
            "--channel", "dna", "--size", "32", "--quiet",
            "--workers", str(workers)]  # fmt: skip
    assert main(argv) == 0
    return CellDataset(out)


def test_two_workers_write_the_serial_dataset(mixed_folder, tmp_path):
    serial = crop(mixed_folder, tmp_path / "serial" / "ds", 1)
    pooled = crop(mixed_folder, tmp_path / "pooled" / "ds", 2)
    assert serial.manifest.num_rows == 24
    meta = serial.metadata()
    assert meta.equals(pooled.metadata())
    assert np.array_equal(serial.images(), pooled.images())
    assert np.array_equal(serial.masks(), pooled.masks())
    q = serial.quarantine()
    assert set(q["reason"].str.split(":").str[0]) == {
        "touches the field edge", "field unreadable", "field has 1 channel(s), the dataset 2",
    }  # fmt: skip
    assert q.equals(pooled.quarantine())
    assert serial.manifest.content_hash == pooled.manifest.content_hash
    # Every file but the per-field timings is the same, byte for byte.
    files = sorted(p.relative_to(serial.path) for p in serial.path.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(pooled.path) for p in pooled.path.rglob("*") if p.is_file()
    )
    assert len([f for f in files if f.parent.name == "montage"]) == 6
    for rel in files:
        if rel.name != "fields.csv":
            assert (serial.path / rel).read_bytes() == (pooled.path / rel).read_bytes(), rel
    timings = [pd.read_csv(d.path / "crop" / "fields.csv") for d in (serial, pooled)]
    assert timings[0].drop(columns="seconds").equals(timings[1].drop(columns="seconds"))


@pytest.mark.parametrize(
    ("finder_class", "workers", "in_workers"),
    [(PidFinder, 2, True), (PidFinder, 1, False), (InProcessFinder, 2, False)],
)
def test_where_the_fields_are_searched(mixed_folder, tmp_path, finder_class, workers, in_workers):
    log = tmp_path / "pids.txt"
    options = CropOptions(size=32, workers=workers)
    crop_fields(mixed_folder, tmp_path / "ds", options, finder=finder_class(log), progress=False)
    pids = set(log.read_text().split())
    assert (str(os.getpid()) not in pids) == in_workers
    assert len(pids) == 1 or in_workers


def test_workers_are_checked(tmp_path):
    with pytest.raises(ValueError, match="--workers"):
        CropOptions(workers=-1)
