"""``bundle.predict`` on arrays, image files and dataset directories gives the same answers as
the engine's model; wrong shapes, dtypes and channels are refused with the fix."""

from __future__ import annotations

import numpy as np
import pytest
from cytotune.engine.data import CellDataset, DatasetSpec, DatasetWriter
from cytotune.engine.export.pull import pull
from cytotune.engine.export.source import select_trial

from cytotune import engine

from .conftest import reference_outputs, trial_folds

COLS = ["p(metastasizing)", "p(normal)"]


@pytest.fixture(scope="module")
def bundle(cls_study, tmp_path_factory):
    path, _ = pull(
        select_trial(cls_study, trial_id="mhl_attention"),
        tmp_path_factory.mktemp("predict") / "b",
        fold=1,
        log=print,
    )
    return engine.load_bundle(path)


def test_load_bundle_is_lazy_on_import_engine():
    import subprocess
    import sys

    code = "import cytotune, sys; assert 'torch' not in sys.modules; print(cytotune.load_bundle)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "load_bundle" in out.stdout


def test_arrays_files_and_dataset_agree_with_the_engine_model(
    bundle, cls_study, cls_dataset, tmp_path
):
    import tifffile

    ds = CellDataset(cls_dataset)
    pixels = ds.images()  # (N, C, H, W) uint16
    want = reference_outputs(trial_folds(cls_study, "mhl_attention")[1:2], pixels * 1.0)
    from_dataset = bundle.predict(cls_dataset)
    assert list(from_dataset.columns) == ["cell_id", "label", "prediction", "confidence", *COLS]
    assert list(from_dataset["cell_id"]) == list(ds.metadata()["cell_id"])
    np.testing.assert_allclose(from_dataset[COLS].to_numpy(), want, atol=1e-5)
    classes = np.array(["metastasizing", "normal"])
    assert list(from_dataset["prediction"]) == list(classes[want.argmax(1)])
    np.testing.assert_allclose(from_dataset["confidence"], want.max(1), atol=1e-5)

    batch = bundle.predict(pixels[:5], batch_size=2)  # several forward passes
    np.testing.assert_allclose(batch[COLS].to_numpy(), want[:5], atol=1e-5)
    one = bundle.predict(pixels[3])  # (C, H, W)
    assert len(one) == 1
    assert one["index"].tolist() == [0]
    np.testing.assert_allclose(one[COLS].to_numpy(), want[3:4], atol=1e-5)
    as_float = bundle.predict(pixels[:2].astype(np.float32))  # raw values as float
    np.testing.assert_allclose(as_float[COLS].to_numpy(), want[:2], atol=1e-5)

    paths = [tmp_path / "a.tif", tmp_path / "b.npy", tmp_path / "c.tiff"]
    tifffile.imwrite(paths[0], pixels[0])  # (C, H, W) multi-page TIFF
    np.save(paths[1], pixels[1])
    tifffile.imwrite(paths[2], np.moveaxis(pixels[2], 0, -1))  # (H, W, C)
    files = bundle.predict([str(p) for p in paths])
    assert files["path"].tolist() == [str(p) for p in paths]
    np.testing.assert_allclose(files[COLS].to_numpy(), want[:3], atol=1e-5)


def test_dataset_with_reordered_channels_is_reordered(bundle, cls_dataset, tmp_path):
    ds = CellDataset(cls_dataset)
    pixels = ds.images(np.arange(6))
    order = [2, 0, 1]
    names = tuple(np.array(ds.manifest.channel_names)[order])
    spec = DatasetSpec(names, "uint16", (3, 32, 32), "classification")
    with DatasetWriter(tmp_path / "swapped", spec) as writer:
        for i, image in enumerate(pixels):
            writer.add(f"s{i}", image[order], label="normal")
    got = bundle.predict(tmp_path / "swapped")
    np.testing.assert_allclose(got[COLS].to_numpy(), bundle.predict(pixels)[COLS], atol=1e-6)


def test_wrong_inputs_are_refused_with_the_fix(bundle, cls_dataset, tmp_path):
    pixels = CellDataset(cls_dataset).images(np.arange(2))
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\).*dna.*actin.*vimentin"):
        bundle.predict(pixels[:, :2])
    with pytest.raises(ValueError, match="--size 32"):
        bundle.predict(np.zeros((2, 3, 48, 48), np.uint16))
    with pytest.raises(ValueError, match="uint8 but the model was trained on uint16"):
        bundle.predict(pixels.astype(np.uint8))
    assert len(bundle.predict(pixels.astype(np.uint8), check_dtype=False)) == 2
    with pytest.raises(TypeError, match="predict takes an array"):
        bundle.predict({"pixels": pixels})
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        bundle.predict([str(tmp_path / "nope.tif")])
    spec = DatasetSpec(("dna", "tubulin", "actin"), "uint16", (3, 32, 32), "classification")
    with DatasetWriter(tmp_path / "other", spec) as writer:
        writer.add("x", pixels[0], label="a")
    with pytest.raises(ValueError, match="tubulin.*the model takes"):
        bundle.predict(tmp_path / "other")


def test_members_and_normalize_serve_explainers(bundle, cls_dataset):
    import torch

    pixels = CellDataset(cls_dataset).images(np.arange(3))
    x = bundle.normalize(pixels)
    ds = CellDataset(cls_dataset).manifest.stats
    manual = (pixels[:, 0].astype(np.float64) - ds.mean[0]) / ds.std[0]
    np.testing.assert_allclose(x[:, 0].numpy(), manual, rtol=1e-5, atol=1e-5)
    (member,) = bundle.members
    with torch.no_grad():
        probs = member(x).softmax(1).numpy()
    np.testing.assert_allclose(probs, bundle.predict(pixels)[COLS].to_numpy(), atol=1e-6)
    assert bundle.output_names == ["metastasizing", "normal"]
    assert "mhl_attention" in repr(bundle)
