"""Bundle files and their validation: what a bundle holds, and how a missing file, bad JSON, a
newer version, truncated or altered weights are refused (with the problem and the fix)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cytotune.engine.export import BundleError, load_bundle
from cytotune.engine.export.bundle import read_manifest, sha256
from cytotune.engine.export.pull import pull
from cytotune.engine.export.source import select_trial


@pytest.fixture(scope="module")
def good(cls_study, tmp_path_factory):
    source = select_trial(cls_study, trial_id="small_cnn")
    path, _ = pull(source, tmp_path_factory.mktemp("good") / "b", formats=["state_dict", "torchscript"], log=print)  # fmt: skip
    return path


@pytest.fixture
def copy(good, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(good, target)
    return target


def test_bundle_holds_contract_metrics_provenance_and_checksums(good, cls_dataset):
    from cytotune.engine.data import CellDataset

    manifest = read_manifest(good)
    assert (manifest["format"], manifest["version"]) == ("cytotune-bundle", 1)
    names = set(manifest["files"])
    assert {"config.json", "data.json", "metrics.json", "provenance.json", "README.md",
            "sample.npz", "weights/member_0.pt", "model.torchscript.pt"} <= names  # fmt: skip
    for name, entry in manifest["files"].items():
        assert sha256(good / name) == entry["sha256"]
    data = json.loads((good / "data.json").read_text())
    ds = CellDataset(cls_dataset).manifest
    assert data["channel_names"] == ds.channel_names == ["dna", "actin", "vimentin"]
    assert data["dtype"] == "uint16"
    assert data["shape"] == [3, 32, 32]
    assert data["label_map"] == ds.label_map
    assert data["content_hash"] == ds.content_hash
    np.testing.assert_allclose(data["normalization"]["offset"], ds.stats.mean)
    np.testing.assert_allclose(data["normalization"]["scale"], ds.stats.std)
    config = json.loads((good / "config.json").read_text())
    assert config["family"] == "small_cnn"
    assert config["model"]["args"]["filters"] == 8
    prov = json.loads((good / "provenance.json").read_text())
    assert prov["trial"]["trial_id"] == "small_cnn"
    assert prov["folds"]["name"] == "k2-well"
    assert (
        prov["dataset"]["content_hash"] == ds.content_hash == prov["dataset"]["study_dataset_hash"]
    )
    assert {"cytotune", "torch", "timm"} <= set(prov["versions"])
    assert "commit" in prov["git"]
    assert prov["search_space"] == {"name": "test"}
    assert not list(good.parent.glob(".*tmp*"))  # the staging directory was renamed away


def test_sample_file_reproduces_with_plain_torch(good):
    import torch

    sample = np.load(good / "sample.npz")
    module = torch.jit.load(str(good / "model.torchscript.pt"))
    got = module(torch.from_numpy(sample["pixels"])).detach().numpy()
    np.testing.assert_allclose(got, sample["probabilities"], atol=1e-6)
    assert sample["pixels"].max() > 50  # raw uint16 intensities, not normalised values


def test_existing_bundle_is_not_replaced_without_overwrite(good, cls_study):
    before = (good / "bundle.json").read_text()
    with pytest.raises(FileExistsError, match="--overwrite"):
        pull(select_trial(cls_study, trial_id="backbone"), good, log=print)
    assert (good / "bundle.json").read_text() == before


def _corrupt(path, case):
    if case == "missing weights":
        (path / "weights/member_0.pt").unlink()
    elif case == "missing bundle.json":
        (path / "bundle.json").unlink()
    elif case == "bad json":
        (path / "bundle.json").write_text('{"format": "cytotune-bundle", "version": ')
    elif case == "newer version":
        manifest = json.loads((path / "bundle.json").read_text())
        (path / "bundle.json").write_text(json.dumps({**manifest, "version": 99}))
    elif case == "other format":
        (path / "bundle.json").write_text(json.dumps({"format": "something-else", "version": 1}))
    elif case == "truncated weights":
        data = (path / "weights/member_0.pt").read_bytes()
        (path / "weights/member_0.pt").write_bytes(data[: len(data) // 2])
    elif case == "altered config":
        text = (path / "config.json").read_text().replace('"filters": 8', '"filters": 9')
        (path / "config.json").write_text(text)
    elif case == "unlisted weights":
        manifest = json.loads((path / "bundle.json").read_text())
        manifest["formats"]["state_dict"]["files"].append("weights/member_1.pt")
        (path / "bundle.json").write_text(json.dumps(manifest))


CASES = {
    "missing weights": ["incomplete", "weights/member_0.pt is missing", "copy the whole"],
    "missing bundle.json": ["not a cytotune bundle", "bundle.json is missing"],
    "bad json": ["bundle.json is not valid JSON", "cytotune pull"],
    "newer version": ["version 99", "reads version 1", "upgrade cytotune"],
    "other format": ["not a cytotune bundle", "something-else"],
    "truncated weights": ["corrupt", "weights/member_0.pt has", "truncated"],
    "altered config": ["corrupt", "sha256 of config.json"],
    "unlisted weights": ["incomplete", "weights/member_1.pt"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_bundles_are_refused_with_the_problem_and_the_fix(copy, case):
    load_bundle(copy)  # intact before
    _corrupt(copy, case)
    with pytest.raises(BundleError) as info:
        load_bundle(copy)
    for words in CASES[case]:
        assert words in str(info.value), (case, str(info.value))


def test_cli_check_reports_valid_and_corrupt_bundles(copy, capsys):
    from cytotune.engine.cli import main

    assert main(["pull", "--check", str(copy)]) == 0
    assert "valid cytotune-bundle v1" in capsys.readouterr().out
    _corrupt(copy, "truncated weights")
    assert main(["pull", "--check", str(copy)]) == 2
    assert "is corrupt" in capsys.readouterr().err


def test_missing_backend_is_named(good):
    with pytest.raises(ValueError, match="no onnx export.*--format onnx"):
        load_bundle(good, backend="onnx")
    with pytest.raises(ValueError, match="backend 'tensorflow'"):
        load_bundle(good, backend="tensorflow")


def test_bundle_directory_gets_the_umask_permissions_not_700(good):
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(good.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((good / "weights").stat().st_mode) == 0o777 & ~umask


def test_card_says_torchscript_is_deprecated_and_what_replaces_it(good):
    card = (good / "README.md").read_text()
    assert "TorchScript is deprecated" in card
    assert "torch.export.load" in card
    assert "--format torch_export" in card


def test_readme_bundle_and_run_folders_are_git_ignored():
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("bundle/README.md", "runs/demo/x", "bundles/best/bundle.json"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=root)
        assert ignored.returncode == 0, f"{path} is not ignored by .gitignore"
