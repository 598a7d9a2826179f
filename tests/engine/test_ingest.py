"""Ingest: every source format round-trips pixel-exactly; every bad input is quarantined with its reason."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from cytotune.engine.cli import main
from cytotune.engine.data import CellDataset
from cytotune.engine.data.ingest import IngestOptions, ingest
from PIL import Image

RNG = np.random.default_rng(7)
ONE_WORKER = IngestOptions(workers=1)


def _by_id(ds: CellDataset) -> dict[str, np.ndarray]:
    return dict(zip(ds.metadata()["cell_id"], ds.images()))


def _index(tmp_path, rows, name="index.csv"):
    path = tmp_path / name
    frame = pd.DataFrame(rows)
    frame.to_parquet(path) if name.endswith(".parquet") else frame.to_csv(path, index=False)
    return path


def _save_png(path, chw):
    Image.fromarray(chw[0] if chw.shape[0] == 1 else np.moveaxis(chw, 0, -1)).save(path)


def _save_tiff_pages(path, chw):
    tifffile.imwrite(path, chw, photometric="minisblack")  # (pages, H, W)


def _save_tiff_hwc(path, chw):
    tifffile.imwrite(path, np.moveaxis(chw, 0, -1), photometric="minisblack", planarconfig="contig")


def _save_npy_hwc(path, chw):
    np.save(path, np.moveaxis(chw, 0, -1))


FORMATS = {
    "png-grey-uint8": ("png", 1, np.uint8, _save_png),
    "png-rgb-stays-3ch": ("png", 3, np.uint8, _save_png),
    "png-grey-uint16": ("png", 1, np.uint16, _save_png),
    "tiff-multipage-uint16": ("tif", 3, np.uint16, _save_tiff_pages),
    "tiff-multichannel-hwc": ("tiff", 4, np.uint16, _save_tiff_hwc),
    "npy-chw-float32": ("npy", 2, np.float32, np.save),
    "npy-hwc-uint16": ("npy", 3, np.uint16, _save_npy_hwc),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("index_kind", ["index.csv", "index.parquet"])
def test_index_formats_round_trip_pixel_exact(tmp_path, fmt, index_kind):
    suffix, channels, dtype, save = FORMATS[fmt]
    expected, rows = {}, []
    for i in range(5):
        if dtype == np.float32:
            chw = RNG.random((channels, 20, 24)).astype(np.float32)
        else:
            chw = RNG.integers(0, np.iinfo(dtype).max + 1, size=(channels, 20, 24), dtype=dtype)
        save(tmp_path / f"c{i}.{suffix}", chw)
        expected[f"c{i}"] = chw
        rows.append({"path": f"c{i}.{suffix}", "label": "ab"[i % 2], "well": f"w{i % 3}"})
    report = ingest(_index(tmp_path, rows, index_kind), tmp_path / "ds", ONE_WORKER, progress=False)
    ds = CellDataset(tmp_path / "ds")
    assert report.manifest.num_quarantined == 0
    assert ds.manifest.num_rows == 5
    assert ds.manifest.dtype == np.dtype(dtype).name
    assert ds.manifest.shape == [channels, 20, 24]
    got = _by_id(ds)
    for cell_id, chw in expected.items():
        np.testing.assert_array_equal(got[cell_id], chw)
    assert ds.manifest.group_columns == ["well"]
    assert ds.metadata().set_index("cell_id").loc["c4", "well"] == "w1"


def test_jpeg_equals_reference_decoder(tmp_path):
    rgb = RNG.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "j.jpg", quality=90)
    ingest(
        _index(tmp_path, [{"path": "j.jpg", "label": "x"}]),
        tmp_path / "ds",
        ONE_WORKER,
        progress=False,
    )
    decoded = np.asarray(Image.open(tmp_path / "j.jpg"))
    np.testing.assert_array_equal(
        CellDataset(tmp_path / "ds").images()[0], np.moveaxis(decoded, -1, 0)
    )


def test_folder_of_class_subfolders(tmp_path):
    expected = {}
    for label in ("normal", "metastasizing"):
        (tmp_path / "src" / label).mkdir(parents=True)
        for i in range(3):
            chw = RNG.integers(0, 256, size=(1, 10, 10), dtype=np.uint8)
            _save_png(tmp_path / "src" / label / f"{i}.png", chw)
            expected[f"{label}/{i}"] = (label, chw)
    ingest(tmp_path / "src", tmp_path / "ds", ONE_WORKER, progress=False)
    ds = CellDataset(tmp_path / "ds")
    meta = ds.metadata()
    for (cell_id, label), image in zip(
        meta[["cell_id", "label"]].itertuples(index=False), ds.images()
    ):
        assert expected[cell_id][0] == label
        np.testing.assert_array_equal(image, expected[cell_id][1])
    assert ds.manifest.label_map == {"metastasizing": 0, "normal": 1}
    # readable by the lab like every other file of the dataset (not mkstemp's 0600)
    shard_mode = (tmp_path / "ds" / ds.manifest.shards[0]).stat().st_mode & 0o777
    assert (tmp_path / "ds" / "manifest.json").stat().st_mode & 0o777 == shard_mode


def test_npz_bundle_with_masks_and_groups(tmp_path):
    images = RNG.random((5, 2, 12, 12)).astype(np.float32)
    masks = RNG.integers(0, 2, size=(5, 12, 12), dtype=np.uint8)
    np.savez(
        tmp_path / "b.npz",
        images=images,
        labels=np.array(list("aabba")),
        masks=masks,
        plate=np.array(["p1"] * 5),
    )
    ingest(
        tmp_path / "b.npz",
        tmp_path / "ds",
        IngestOptions(workers=1, channel_names=("dna", "actin")),
        progress=False,
    )
    ds = CellDataset(tmp_path / "ds")
    np.testing.assert_array_equal(ds.images(), images)
    np.testing.assert_array_equal(ds.masks(), masks)
    assert ds.manifest.channel_names == ["dna", "actin"]
    assert ds.manifest.has_mask
    assert ds.metadata()["plate"].tolist() == ["p1"] * 5
    assert ds.manifest.class_counts == {"a": 3, "b": 2}


def test_mask_column_channel_order_and_regression_targets(tmp_path):
    chw = RNG.integers(0, 4096, size=(3, 16, 16), dtype=np.uint16)
    np.save(tmp_path / "a.npy", chw)
    mask = (RNG.random((16, 16)) > 0.5).astype(np.uint8) * 255
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    index = _index(
        tmp_path,
        [
            {
                "path": "a.npy",
                "mask": "a_mask.png",
                "size_um": "3.5",
                "density": "0.25",
                "patient": "p7",
            }
        ],
    )
    options = IngestOptions(
        workers=1,
        channel_order=(2, 0),
        channel_names=("actin", "dna"),
        targets=("size_um", "density"),
    )
    ingest(index, tmp_path / "ds", options, progress=False)
    ds = CellDataset(tmp_path / "ds")
    np.testing.assert_array_equal(ds.images()[0], chw[[2, 0]])
    np.testing.assert_array_equal(ds.masks()[0], (mask > 0).astype(np.uint8))
    meta = ds.metadata()
    assert ds.manifest.task == "regression"
    assert ds.manifest.targets == ["size_um", "density"]
    assert meta.loc[0, "size_um"] == 3.5
    assert meta.loc[0, "density"] == 0.25
    assert meta.loc[0, "patient"] == "p7"


@pytest.mark.parametrize(
    "mode, source_hw, expect",
    [("pad", (10, 14), "pad"), ("crop", (20, 16), "crop"), ("resize", (24, 24), "resize")],
)
def test_size_fitting(tmp_path, mode, source_hw, expect):
    chw = RNG.integers(0, 256, size=(1, *source_hw), dtype=np.uint8)
    np.save(tmp_path / "a.npy", chw)
    ingest(
        _index(tmp_path, [{"path": "a.npy", "label": "x"}]),
        tmp_path / "ds",
        IngestOptions(workers=1, size=(12, 12), fit_mode=mode),
        progress=False,
    )
    got = CellDataset(tmp_path / "ds").images()[0]
    assert got.shape == (1, 12, 12)
    if expect == "pad":  # height 10 -> padded by 1 each side; width 14 -> cropped 1 each side
        np.testing.assert_array_equal(got[:, 1:11, :], chw[:, :, 1:13])
        assert (got[:, 0] == 0).all()
        assert (got[:, 11] == 0).all()
    elif expect == "crop":
        np.testing.assert_array_equal(got, chw[:, 4:16, 2:14])
    else:  # bilinear resize: equals PIL's float resize, rounded
        ref = np.asarray(
            Image.fromarray(chw[0].astype(np.float32), mode="F").resize((12, 12), Image.BILINEAR)
        )
        np.testing.assert_array_equal(got[0], np.clip(np.rint(ref), 0, 255).astype(np.uint8))


def _bad_input_source(tmp_path):
    """One good crop per class plus one crop for every failure ingest must catch."""
    good = RNG.integers(0, 256, size=(2, 8, 8), dtype=np.uint8)
    rows = []
    for i in range(6):
        np.save(tmp_path / f"good{i}.npy", good + i)
        rows.append({"path": f"good{i}.npy", "label": "ab"[i % 2], "cell_id": f"g{i}"})
    np.save(tmp_path / "three.npy", np.zeros((3, 8, 8), np.uint8))
    np.save(tmp_path / "u16.npy", np.zeros((2, 8, 8), np.uint16) + 300)
    nan = np.zeros((2, 8, 8), np.float32)
    nan[0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "big.npy", np.zeros((2, 9, 9), np.uint8))
    _save_png(tmp_path / "trunc.png", RNG.integers(0, 256, size=(1, 64, 64), dtype=np.uint8))
    data = (tmp_path / "trunc.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.tif").write_bytes(b"not a tiff at all")
    (tmp_path / "notes.txt").write_text("hello")
    rows += [
        {"path": "three.npy", "label": "a", "cell_id": "three"},
        {"path": "u16.npy", "label": "a", "cell_id": "u16"},
        {"path": "nan.npy", "label": "a", "cell_id": "nan"},
        {"path": "big.npy", "label": "a", "cell_id": "big"},
        {"path": "trunc.png", "label": "a", "cell_id": "trunc"},
        {"path": "garbage.tif", "label": "a", "cell_id": "garbage"},
        {"path": "notes.txt", "label": "a", "cell_id": "txt"},
        {"path": "missing.npy", "label": "a", "cell_id": "missing"},
        {"path": "good0.npy", "label": "", "cell_id": "nolabel"},
        {"path": "good1.npy", "label": "a", "cell_id": "g1"},  # duplicate id
    ]
    return _index(tmp_path, rows)


EXPECTED_REASONS = {
    "three": "wrong channel count",
    "u16": "mixed dtypes",
    "nan": "mixed dtypes",  # float crop in a uint8 dataset; NaN itself is checked below
    "big": "size 9x9 differs",
    "trunc": "unreadable",
    "garbage": "unreadable",
    "txt": "unsupported file type",
    "missing": "file not found",
    "nolabel": "empty label",
    "g1": "duplicate cell id",
}


def test_every_bad_input_is_quarantined_with_reason(tmp_path):
    report = ingest(_bad_input_source(tmp_path), tmp_path / "ds", ONE_WORKER, progress=False)
    ds = CellDataset(tmp_path / "ds")
    assert ds.manifest.num_rows == 6
    quarantine = ds.quarantine().set_index("cell_id")["reason"]
    assert len(quarantine) == len(EXPECTED_REASONS) == report.manifest.num_quarantined
    for cell_id, fragment in EXPECTED_REASONS.items():
        assert fragment in quarantine[cell_id], (cell_id, quarantine[cell_id])
    assert report.total == 16


def test_nan_and_inf_pixels_quarantined(tmp_path):
    rows = []
    for i, value in enumerate([0.5, np.nan, np.inf, 0.25]):
        a = np.full((1, 6, 6), 0.1, np.float32)
        a[0, 2, 2] = value
        np.save(tmp_path / f"f{i}.npy", a)
        rows.append({"path": f"f{i}.npy", "label": "a"})
    ingest(_index(tmp_path, rows), tmp_path / "ds", ONE_WORKER, progress=False)
    q = CellDataset(tmp_path / "ds").quarantine()
    assert sorted(q["cell_id"]) == ["f1", "f2"]
    assert set(q["reason"]) == {"NaN or inf pixel values"}


def test_cli_exit_code_follows_bad_fraction(tmp_path, capsys):
    index = _bad_input_source(tmp_path)
    assert (
        main(["ingest", str(index), "--out", str(tmp_path / "a"), "--workers", "1", "--quiet"]) == 1
    )
    out = capsys.readouterr().out
    assert "10 quarantined" in out
    assert "wrong channel count" in out
    assert "max-bad-fraction" in out
    assert (
        main(
            [
                "ingest",
                str(index),
                "--out",
                str(tmp_path / "b"),
                "--workers",
                "1",
                "--quiet",
                "--max-bad-fraction",
                "0.7",
            ]
        )
        == 0
    )


def test_content_hash_stable_order_independent_and_sensitive(tmp_path):
    rows = []
    for i in range(8):
        np.save(tmp_path / f"c{i}.npy", RNG.integers(0, 256, size=(1, 8, 8), dtype=np.uint8))
        rows.append({"path": f"c{i}.npy", "label": "ab"[i % 2]})
    index = _index(tmp_path, rows)
    h1 = ingest(index, tmp_path / "d1", ONE_WORKER, progress=False).manifest.content_hash
    h2 = ingest(
        index, tmp_path / "d2", IngestOptions(workers=2, rows_per_shard=3), progress=False
    ).manifest.content_hash
    h3 = ingest(
        _index(tmp_path, rows[::-1], "rev.csv"), tmp_path / "d3", ONE_WORKER, progress=False
    ).manifest.content_hash
    assert h1 == h2 == h3
    a = np.load(tmp_path / "c3.npy")
    a[0, 0, 0] ^= 1
    np.save(tmp_path / "c3.npy", a)
    assert ingest(index, tmp_path / "d4", ONE_WORKER, progress=False).manifest.content_hash != h1


def test_existing_dataset_never_silently_overwritten(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((1, 8, 8), np.uint8))
    index = _index(tmp_path, [{"path": "a.npy", "label": "x"}])
    ingest(index, tmp_path / "ds", ONE_WORKER, progress=False)
    before = (tmp_path / "ds" / "manifest.json").read_text()
    with pytest.raises(FileExistsError, match="--overwrite"):
        ingest(index, tmp_path / "ds", ONE_WORKER, progress=False)
    assert (tmp_path / "ds" / "manifest.json").read_text() == before
    ingest(index, tmp_path / "ds", IngestOptions(workers=1, overwrite=True), progress=False)
    assert not list(tmp_path.glob(".ds.*")), "staging directories must be cleaned up"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fit_mode": "stretch"}, "--fit"),
        ({"max_bad_fraction": 2.0}, "max-bad-fraction"),
        ({"channel_names": ("a", "a")}, "repeat"),
    ],
)
def test_invalid_options_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IngestOptions(**kwargs)


def test_bad_index_files_give_clear_errors(tmp_path):
    (tmp_path / "nopath.csv").write_text("file_name,label\na.png,x\n")
    with pytest.raises(ValueError, match="no path column"):
        ingest(tmp_path / "nopath.csv", tmp_path / "ds", ONE_WORKER, progress=False)
    (tmp_path / "nolabel.csv").write_text("path,well\na.png,w1\n")
    with pytest.raises(ValueError, match="no 'label' column"):
        ingest(tmp_path / "nolabel.csv", tmp_path / "ds", ONE_WORKER, progress=False)
    (tmp_path / "allbad.csv").write_text("path,label\nmissing.png,x\n")
    with pytest.raises(ValueError, match="no crop"):
        ingest(tmp_path / "allbad.csv", tmp_path / "ds", ONE_WORKER, progress=False)
    assert not (tmp_path / "ds").exists()
