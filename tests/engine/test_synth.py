"""Synthetic cells: determinism, layout, weak labels, confound, dataset round-trip, CLI, learnability."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import cytotune.engine.synth as synth
import numpy as np
import pytest
from cytotune.engine.cli import main
from cytotune.engine.data import CellDataset, Manifest
from cytotune.engine.synth import shapes
from cytotune.engine.synth.tasks import Tape
from PIL import Image
from scipy import ndimage
from scipy.stats import mannwhitneyu

TASKS = {"metastasis": 3, "microtubule": 1}  # task -> channels


@pytest.fixture(scope="module")
def metastasis():
    return synth.render("metastasis", 240, seed=3)


@pytest.fixture(scope="module")
def microtubule():
    return synth.render("microtubule", 240, seed=3)


def _background(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-crop median of the pixels outside the cell, (N,)."""
    return np.array([np.median(i[~m]) for i, m in zip(img, mask.astype(bool))])


def _vimentin_radius(batch) -> np.ndarray:
    """Vimentin-weighted mean distance from the mask centroid, in units of the mask radius."""
    img = batch.images[:, 2].astype(np.float64)
    mask = batch.masks.astype(bool)
    signal = np.clip(img - _background(img, mask)[:, None, None], 0, None) * mask
    yy, xx = np.mgrid[: img.shape[1], : img.shape[2]]
    area = mask.sum(axis=(1, 2))
    cy = (mask * yy).sum(axis=(1, 2)) / area
    cx = (mask * xx).sum(axis=(1, 2)) / area
    r = (
        np.hypot(yy - cy[:, None, None], xx - cx[:, None, None])
        / np.sqrt(area / np.pi)[:, None, None]
    )
    return (signal * r).sum(axis=(1, 2)) / signal.sum(axis=(1, 2))


# --- registry and options -------------------------------------------------------------------


def test_registry_lists_tasks_and_rejects_unknown_names():
    assert synth.list_tasks() == ["metastasis", "microtubule"]
    assert synth.list_tasks("micro*") == ["microtubule"]
    with pytest.raises(ValueError, match="metastasis"):
        synth.render("metastasiss", 4)
    with pytest.raises(ValueError, match="already registered"):
        synth.register_task("metastasis")(synth.SynthTask)


@pytest.mark.parametrize(
    "task, options, name",
    [
        ("metastasis", {"weak_fraction": 0.0}, "weak_fraction"),
        ("metastasis", {"weak_fraction": 1.5}, "weak_fraction"),
        ("metastasis", {"confound": -0.1}, "confound"),
        ("metastasis", {"plates": 0}, "plates"),
        ("metastasis", {"plates": 2.5}, "plates"),
        ("metastasis", {"wells_per_class": "3"}, "wells_per_class"),
        ("metastasis", {"shape_difference": 2}, "shape_difference"),
        ("metastasis", {"bogus": 1}, "bogus"),
        ("microtubule", {"low_dose": 0.7, "high_dose": 0.6}, "high_dose"),
        ("microtubule", {"confound": 0.5, "plates": 2}, "confound"),
    ],
)
def test_bad_options_raise_value_error_naming_the_option(task, options, name):
    with pytest.raises(ValueError, match=name):
        synth.render(task, 4, **options)


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"n": 2, "size": 8}, {"n": 2, "seed": -1}])
def test_bad_call_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        synth.render("metastasis", **kwargs)


@pytest.mark.parametrize("name", ["metastasis", "microtubule"])
def test_tasks_consume_exactly_their_declared_tape(name):
    task = synth.get_task(name)
    tape = Tape(np.random.rand(3, task.n_uniform), np.random.randn(3, task.n_normal))
    shown = np.arange(3) % len(task.classes)
    drawing = task.draw(shown, tape, 32, task.make_options())
    assert (tape._iu, tape._iz) == (task.n_uniform, task.n_normal)
    assert drawing.signal.shape == (3, len(task.channel_names), 32, 32)


# --- shapes, determinism, prefix --------------------------------------------------------------


@pytest.mark.parametrize("task, channels", TASKS.items())
@pytest.mark.parametrize("size", [32, 64, 96])
def test_shapes_and_dtypes(task, channels, size):
    b = synth.render(task, 6, size=size)
    assert b.images.shape == (6, channels, size, size)
    assert b.images.dtype == np.uint16
    assert b.masks.shape == b.evidence.shape == (6, size, size)
    assert b.masks.dtype == b.evidence.dtype == np.uint8
    assert set(np.unique(b.masks)) <= {0, 1}
    assert set(np.unique(b.evidence)) <= {0, 1}
    assert len(b) == len(b.labels) == len(b.plates) == len(b.wells) == len(b.fields) == 6
    assert b.phenotype_present.dtype == bool
    assert len(b.channel_names) == channels
    assert len(set(b.cell_ids)) == 6


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_same_bytes_other_seed_differs(task):
    a, b = synth.render(task, 12, seed=5), synth.render(task, 12, seed=5)
    assert a.images.tobytes() == b.images.tobytes()
    assert a.evidence.tobytes() == b.evidence.tobytes()
    c = synth.render(task, 12, seed=6)
    assert a.images.tobytes() != c.images.tobytes()


@pytest.mark.parametrize("task", TASKS)
def test_prefix_property_across_chunks(task):
    long = synth.render(task, 300, seed=1, weak_fraction=0.5)  # two internal chunks
    short = synth.render(task, 50, seed=1, weak_fraction=0.5)
    np.testing.assert_array_equal(long.images[:50], short.images)
    np.testing.assert_array_equal(long.masks[:50], short.masks)
    np.testing.assert_array_equal(long.evidence[:50], short.evidence)
    np.testing.assert_array_equal(long.phenotype_present[:50], short.phenotype_present)
    for name in ("labels", "plates", "wells", "fields"):
        assert getattr(long, name)[:50] == getattr(short, name)


# --- ground truth masks, layout, balance ------------------------------------------------------


@pytest.mark.parametrize("fixture", ["metastasis", "microtubule"])
def test_masks_non_empty_and_evidence_inside(fixture, request):
    b = request.getfixturevalue(fixture)
    mask, evidence = b.masks.astype(bool), b.evidence.astype(bool)
    area = mask.sum(axis=(1, 2))
    assert (area > 0.08 * mask[0].size).all()
    assert not (evidence & ~mask).any()
    assert (evidence.sum(axis=(1, 2)) > 0).mean() > 0.95
    assert (evidence.sum(axis=(1, 2)) < area).all()
    # the cell is brighter than the background in every channel
    for c in range(b.images.shape[1]):
        img = b.images[:, c].astype(float)
        inside = np.array([i[m].mean() for i, m in zip(img, mask)])
        assert (inside > _background(img, mask) + 20).mean() > 0.95


@pytest.mark.parametrize("fixture", ["metastasis", "microtubule"])
def test_classes_balanced_and_wells_class_pure(fixture, request):
    b = request.getfixturevalue(fixture)
    counts = Counter(b.labels)
    assert set(counts) == set(b.classes)
    assert max(counts.values()) - min(counts.values()) <= 1
    labels_per_well = defaultdict(set)
    for well, label in zip(b.wells, b.labels):
        labels_per_well[well].add(label)
    assert all(len(v) == 1 for v in labels_per_well.values())
    assert all(w.startswith(p + "-") for p, w in zip(b.plates, b.wells))
    assert all(f.startswith(w + "-F") for w, f in zip(b.wells, b.fields))
    # without confound every plate holds every class, about equally
    per_plate = Counter(zip(b.plates, b.labels))
    assert len(per_plate) == len(set(b.plates)) * len(b.classes)
    assert max(per_plate.values()) - min(per_plate.values()) <= 2


def test_reference_cells_never_carry_the_phenotype(metastasis):
    labels = np.array(metastasis.labels)
    assert not metastasis.phenotype_present[labels == "normal"].any()
    assert metastasis.phenotype_present[labels == "metastasizing"].all()  # weak_fraction = 1


@pytest.mark.parametrize("task, fraction", [("metastasis", 0.3), ("microtubule", 0.6)])
def test_weak_fraction_is_honoured(task, fraction):
    b = synth.render(task, 600, seed=2, weak_fraction=fraction)
    exposed = np.array(b.labels) != b.classes[0]
    share = b.phenotype_present[exposed].mean()
    assert abs(share - fraction) < 0.08  # binomial sd ~0.025 at these counts
    assert not b.phenotype_present[~exposed].any()


def test_weak_cells_look_like_the_reference_class():
    b = synth.render("metastasis", 400, seed=4, weak_fraction=0.5)
    stat = _vimentin_radius(b)
    labels = np.array(b.labels)
    normal = stat[labels == "normal"]
    present = stat[b.phenotype_present]
    absent = stat[(labels == "metastasizing") & ~b.phenotype_present]
    assert abs(absent.mean() - normal.mean()) < 0.25 * abs(present.mean() - normal.mean())


@pytest.mark.parametrize("plates", [2, 4])
def test_confound_puts_each_class_on_its_own_plates(plates):
    b = synth.render("metastasis", 200, seed=0, confound=1.0, plates=plates)
    classes_per_plate = defaultdict(set)
    for plate, label in zip(b.plates, b.labels):
        classes_per_plate[plate].add(label)
    assert len(classes_per_plate) == plates
    assert all(len(v) == 1 for v in classes_per_plate.values())
    if plates == 2:  # the plate batch effect alone (background level) then predicts the class
        background = _background(b.images[:, 0].astype(float), b.masks)
        y = np.array(b.labels) == "metastasizing"
        auc = mannwhitneyu(background[y], background[~y]).statistic / (y.sum() * (~y).sum())
        assert max(auc, 1 - auc) == 1.0


def test_partial_confound_is_between():
    def plate_purity(confound):
        b = synth.render("microtubule", 600, seed=0, confound=confound, plates=3)
        counts = Counter(zip(b.plates, b.labels))
        return np.mean(
            [
                max(counts[(p, c)] for c in b.classes) / sum(counts[(p, c)] for c in b.classes)
                for p in set(b.plates)
            ]
        )

    none, half, full = plate_purity(0.0), plate_purity(0.5), plate_purity(1.0)
    assert none < 0.45
    assert 0.5 < half < 0.95
    assert full == 1.0


def test_plate_batch_effects_and_camera_noise(metastasis):
    mask = metastasis.masks.astype(bool)
    dna = metastasis.images[:, 0].astype(float)
    plates = np.array(metastasis.plates)
    medians = {p: np.median(_background(dna[plates == p], mask[plates == p])) for p in set(plates)}
    assert abs(medians["P1"] - medians["P2"]) > 10  # offsets differ between plates
    noise = np.array([d[~m].std() for d, m in zip(dna, mask)])
    assert (noise > 2).all()  # shot + read noise, not a flat background


# --- learnability -----------------------------------------------------------------------------


def test_metastasis_vimentin_radial_profile_separates_classes(metastasis):
    stat = _vimentin_radius(metastasis)
    y = np.array(metastasis.labels) == "normal"
    assert stat[y].mean() > stat[~y].mean() + 0.05
    auc = mannwhitneyu(stat[y], stat[~y]).statistic / (y.sum() * (~y).sum())
    assert auc > 0.85


def test_metastasis_shape_difference_controls_roundness():
    def elongation(batch):
        out = []
        for m in batch.masks.astype(bool):
            ys, xs = np.nonzero(m)
            ev = np.linalg.eigvalsh(np.cov(np.stack([xs, ys])))
            out.append(np.sqrt(ev[1] / ev[0]))
        return np.array(out)

    for diff, expect_gap in ((1.0, True), (0.0, False)):
        b = synth.render("metastasis", 200, seed=1, shape_difference=diff)
        e, y = elongation(b), np.array(b.labels) == "normal"
        gap = e[y].mean() - e[~y].mean()
        assert (gap > 0.25) if expect_gap else (abs(gap) < 0.1)


def test_microtubule_doses_ordered_and_subtle(microtubule):
    img = microtubule.images[:, 0].astype(float)
    mask = microtubule.masks.astype(bool)
    signal = np.clip(img - _background(img, mask)[:, None, None], 0, None)
    peak = np.array([np.percentile(s[m], 99.5) / s[m].mean() for s, m in zip(signal, mask)])
    labels = np.array(microtubule.labels)
    untreated, low, high = (peak[labels == c].mean() for c in microtubule.classes)
    assert untreated > low > high
    assert untreated - low > 3 * (low - high)  # the two doses differ only subtly


# --- primitives against independent references -------------------------------------------------


def test_blur_matches_scipy_gaussian_filter():
    rng = np.random.default_rng(0)
    img = rng.random((2, 3, 48, 48)).astype(np.float32)
    ours = shapes.blur(img, 1.5)
    ref = ndimage.gaussian_filter(img, sigma=(0, 0, 1.5, 1.5), mode="constant", truncate=4.0)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    # a point's mass is preserved away from the borders
    delta = np.zeros((1, 33, 33), dtype=np.float32)
    delta[0, 16, 16] = 1.0
    assert shapes.blur(delta, 2.0).sum() == pytest.approx(1.0, abs=1e-5)


def test_splat_conserves_mass_and_places_points():
    x = np.array([[10.25, 30.0]])
    y = np.array([[20.5, 5.0]])
    out = shapes.splat([(x, y, np.array([[2.0, 1.0]]), 0)], 40)
    assert out.shape == (1, 1, 40, 40)
    assert out.sum() == pytest.approx(3.0)
    np.testing.assert_allclose(out[0, 0, 20:22, 10:12], [[0.75, 0.25], [0.75, 0.25]])
    assert out[0, 0, 5, 30] == pytest.approx(1.0)


# --- dataset, CLI, montage --------------------------------------------------------------------


def test_write_dataset_round_trip_is_pixel_exact(tmp_path):
    opts = {"weak_fraction": 0.5, "plates": 3}
    manifest = synth.write_dataset(
        "metastasis", tmp_path / "ds", 40, size=32, seed=7, progress=False, **opts
    )
    batch = synth.render("metastasis", 40, size=32, seed=7, **opts)
    ds = CellDataset(tmp_path / "ds")
    np.testing.assert_array_equal(ds.images(), batch.images)
    np.testing.assert_array_equal(ds.masks(), batch.masks)
    np.testing.assert_array_equal(ds.masks("evidence"), batch.evidence)
    meta = ds.metadata()
    assert meta["label"].tolist() == batch.labels
    assert meta["cell_id"].tolist() == batch.cell_ids
    for col in ("plate", "well", "field"):
        assert meta[col].tolist() == getattr(batch, col + "s")
    assert meta["phenotype_present"].tolist() == batch.phenotype_present.tolist()
    assert manifest.channel_names == ["dna", "actin", "vimentin"]
    assert manifest.dtype == "uint16"
    assert manifest.group_columns == ["plate", "well", "field"]
    assert manifest.metadata_columns == ["phenotype_present"]
    assert manifest.has_mask
    assert manifest.has_evidence
    assert manifest.class_counts == {"metastasizing": 20, "normal": 20}
    prov = manifest.provenance
    assert prov["task"] == "metastasis"
    assert prov["seed"] == 7
    assert prov["options"]["weak_fraction"] == 0.5
    again = synth.write_dataset(
        "metastasis", tmp_path / "ds", 40, size=32, seed=7, progress=False, overwrite=True, **opts
    )
    assert again.content_hash == manifest.content_hash
    other = synth.write_dataset(
        "metastasis", tmp_path / "o", 40, size=32, seed=8, progress=False, **opts
    )
    assert other.content_hash != manifest.content_hash
    with pytest.raises(FileExistsError):
        synth.write_dataset("metastasis", tmp_path / "ds", 4, progress=False)


def test_cli_writes_dataset_and_reports_hash(tmp_path, capsys):
    out = tmp_path / "mt"
    argv = ["synth", "--task", "microtubule", "--out", str(out), "--n", "30", "--size", "32"]
    assert main([*argv, "--seed", "2", "--weak-fraction", "0.5", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    manifest = Manifest.load(out)
    assert manifest.num_rows == 30
    assert manifest.content_hash in printed
    assert "30 rows" in printed
    assert (
        json.loads((out / "manifest.json").read_text())["provenance"]["options"]["weak_fraction"]
        == 0.5
    )
    direct = synth.write_dataset(
        "microtubule", tmp_path / "d", 30, size=32, seed=2, weak_fraction=0.5, progress=False
    )
    assert direct.content_hash == manifest.content_hash
    assert main([*argv, "--no-progress"]) == 2  # exists, no --overwrite
    assert main([*argv, "--overwrite", "--confound", "2", "--no-progress"]) == 2
    assert "confound" in capsys.readouterr().err


def test_montage_writes_png(tmp_path, microtubule):
    path = synth.montage(microtubule, tmp_path / "m.png", per_class=3, scale=1)
    with Image.open(path) as img:
        assert img.mode == "RGB"
        assert img.size[0] >= 3 * 64
        assert img.size[1] >= 6 * 64
