"""Every registered family exports to state_dict, TorchScript, torch.export and ONNX; the exports
load with plain torch / onnxruntime in a process that cannot import cytotune, and match the engine's
fold models (rebuilt by ``cytotune.engine.train.load_model``) on real raw crops."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cytotune.engine.export import load_bundle
from cytotune.engine.export.pull import pull
from cytotune.engine.export.source import select_trial
from cytotune.search_spaces.models import list_models

from .conftest import TINY, raw_crops, reference_outputs, trial_folds

FORMATS = ["state_dict", "torchscript", "torch_export", "onnx"]
pytest.importorskip("onnxruntime", reason="onnx export tests need onnxruntime (the dev extra)")

# Runs with the repository, the tests and site-packages' cytotune link out of reach: any
# import of a cytotune package fails, so the exports must stand on torch / onnxruntime alone.
PLAIN_RUNNER = textwrap.dedent(
    """
    import json, sys
    sys.modules["cytotune"] = None  # import cytotune (any of its packages) -> ImportError
    import numpy as np, onnxruntime, torch
    jobs = json.loads(sys.argv[1])
    for job in jobs:
        data = np.load(job["inputs"])
        feed = [torch.from_numpy(data["pixels"])]
        if "mask" in data:
            feed.append(torch.from_numpy(data["mask"]))
        ts = torch.jit.load(job["torchscript"])(*feed).detach().numpy()
        pt2 = torch.export.load(job["torch_export"]).module()(*feed).detach().numpy()
        session = onnxruntime.InferenceSession(job["onnx"], providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        ox = session.run(None, {n: t.numpy() for n, t in zip(names, feed)})[0]
        np.savez(job["out"], torchscript=ts, torch_export=pt2, onnx=ox, inputs=np.array(names))
    print("loaded", len(jobs), "bundles;", [m for m in sys.modules if m.split(".")[0] in ("engine", "search_spaces") and sys.modules[m] is not None])
    """
)


@pytest.fixture(scope="module")
def bundles(cls_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles")
    paths = {}
    for family in list_models():
        source = select_trial(cls_study, trial_id=family)
        paths[family], _ = pull(source, out / family, fold=0, formats=FORMATS, log=lambda m: None)
    return paths


def test_every_registered_family_is_covered(bundles):
    assert sorted(bundles) == list_models() == sorted(TINY)
    assert set(list_models()) == {
        "backbone", "channel_attention", "mhl_attention", "protopnet", "small_cnn"
    }  # fmt: skip


@pytest.mark.parametrize("family", list_models())
def test_bundle_records_how_each_format_was_made(bundles, family):
    manifest = json.loads((bundles[family] / "bundle.json").read_text())
    assert list(manifest["formats"]) == FORMATS
    ts = manifest["formats"]["torchscript"]
    # No family scripts (shared CytoModel/TaskHead code); the fallback is tracing, said so.
    assert ts["method"] == "trace"
    assert ts["script_error"]
    assert manifest["formats"]["onnx"]["opset"] == 17
    for name in ("torchscript", "torch_export", "onnx"):
        assert manifest["formats"][name]["max_abs_diff"] <= 1e-4
    assert manifest["family"] == family
    assert manifest["members"] == 1
    inputs = [i["name"] for i in manifest["inputs"]]
    assert inputs == (["pixels", "mask"] if family == "protopnet" else ["pixels"])
    # protopnet's ONNX graph pools the mask with a fixed kernel (the adaptive pooling of the
    # model reads its size from a tensor shape, which the exporter cannot export).
    assert manifest["formats"]["onnx"].get("inputs", inputs) == inputs
    if family == "protopnet":
        assert "fixed kernel" in manifest["formats"]["onnx"]["note"]


def test_exports_load_without_cytotune_and_match_the_engine_models(
    bundles, cls_study, cls_dataset, tmp_path
):
    pixels, masks = raw_crops(cls_dataset)  # uint16 raw crops, as ingested
    jobs, expected = [], {}
    for family, path in bundles.items():
        inputs = {"pixels": pixels.astype(np.float32)}
        mask = masks if family == "protopnet" else None
        if mask is not None:
            inputs["mask"] = mask
        np.savez(tmp_path / f"{family}_in.npz", **inputs)
        jobs.append(
            {
                "inputs": str(tmp_path / f"{family}_in.npz"),
                "torchscript": str(path / "model.torchscript.pt"),
                "torch_export": str(path / "model.pt2"),
                "onnx": str(path / "model.onnx"),
                "out": str(tmp_path / f"{family}_out.npz"),
            }
        )
        fold0 = trial_folds(cls_study, family)[:1]
        expected[family] = reference_outputs(fold0, pixels.astype(np.float32), mask)
    result = subprocess.run(
        [sys.executable, "-I", "-c", PLAIN_RUNNER, json.dumps(jobs)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"loaded {len(jobs)} bundles; []" in result.stdout
    for family in bundles:
        got = np.load(tmp_path / f"{family}_out.npz")
        want = expected[family]
        assert want.shape == (len(pixels), 2)
        np.testing.assert_allclose(want.sum(1), 1.0, atol=1e-5)  # probabilities
        np.testing.assert_allclose(got["torchscript"], want, atol=1e-5, err_msg=family)
        np.testing.assert_allclose(got["torch_export"], want, atol=1e-4, err_msg=family)
        np.testing.assert_allclose(got["onnx"], want, atol=1e-4, err_msg=family)
    assert list(np.load(tmp_path / "protopnet_out.npz")["inputs"]) == ["pixels", "mask"]


def test_mask_input_changes_prototype_outputs_as_the_engine_model(bundles, cls_study, cls_dataset):
    pixels, masks = raw_crops(cls_dataset)
    fold0 = trial_folds(cls_study, "protopnet")[:1]
    with_mask = reference_outputs(fold0, pixels.astype(np.float32), masks)
    without = reference_outputs(fold0, pixels.astype(np.float32), None)
    assert np.abs(with_mask - without).max() > 1e-3  # the mask matters for these crops
    cols = ["p(metastasizing)", "p(normal)"]
    for backend in ("torch", "torchscript", "torch_export", "onnx"):
        bundle = load_bundle(bundles["protopnet"], backend=backend)
        got_mask = bundle.predict(pixels, masks=masks[:, 0])[cols].to_numpy()
        got_none = bundle.predict(pixels)[cols].to_numpy()  # no masks: every pixel is cell
        np.testing.assert_allclose(got_mask, with_mask, atol=1e-4, err_msg=backend)
        np.testing.assert_allclose(got_none, without, atol=1e-4, err_msg=backend)


@pytest.mark.parametrize("backend", ["torch", "torchscript", "torch_export", "onnx"])
def test_backends_agree_on_another_batch_size(bundles, cls_dataset, backend):
    from cytotune.engine.data import CellDataset

    pixels = CellDataset(cls_dataset).images(np.arange(11))  # traced with 8 crops
    bundle = load_bundle(bundles["channel_attention"], backend=backend)
    reference = load_bundle(bundles["channel_attention"]).predict(pixels)
    got = bundle.predict(pixels)
    cols = ["p(metastasizing)", "p(normal)"]
    np.testing.assert_allclose(got[cols].to_numpy(), reference[cols].to_numpy(), atol=1e-4)
    assert list(got["prediction"]) == list(reference["prediction"])
