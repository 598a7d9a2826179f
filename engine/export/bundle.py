"""A bundle is a directory that holds one deployable model and everything needed to trust it.

::

    bundle.json          format name + version, inputs/outputs, formats, sha256 of every file
    config.json          family, model args, members (folds) and their extra state -> rebuild
    data.json            the data contract: channels (order), dtype, crop size, normalisation,
                         label map or regression targets
    metrics.json         cross-validation metrics per fold, fold mean and std
    provenance.json      study, trial, dataset and fold hashes, search space, versions, git commit
    weights/member_K.pt  state dicts (always)   model.torchscript.pt / model.pt2 / model.onnx
    sample.npz           a few raw crops and the outputs they must give (check any runtime)
    README.md            the model card

A bundle is written into a hidden staging directory and renamed into place, so a crash never
leaves half a bundle. :func:`read_manifest` refuses a directory that is not a bundle, a newer
bundle version, a missing file or a file whose size or sha256 differs from ``bundle.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cytotune.engine.io import atomic_directory
from cytotune.engine.train.contract import DataContract

from .ensemble import BundleModel
from .formats import FORMATS, example_inputs, io_names

FORMAT, VERSION = "cytotune-bundle", 1
MANIFEST = "bundle.json"
JSON_FILES = ("config.json", "data.json", "metrics.json", "provenance.json")
SAMPLE_FILE, CARD_FILE = "sample.npz", "README.md"
# Largest absolute difference allowed between an exported graph and the model it came from.
TOLERANCE = 1e-4


class BundleError(ValueError):
    """A directory that is not a usable bundle; the message names the problem and the fix."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def write_bundle(
    out: str | Path,
    model: BundleModel,
    *,
    config: dict,
    data: dict,
    metrics: dict,
    provenance: dict,
    formats: list[str],
    sample: np.ndarray,
    sample_mask: np.ndarray | None = None,
    card: Callable[[dict], str] | None = None,
    overwrite: bool = False,
) -> tuple[Path, dict]:
    """Export ``model`` in ``formats``, check every export against it on ``sample`` and write
    the bundle directory ``out`` atomically.

    Args:
        out: bundle directory to create.
        model: the deployable model (raw pixels in).
        config, data, metrics, provenance: the JSON documents (see the module docstring).
        formats: format names; ``state_dict`` is always written.
        sample: raw crops (N, C, H, W) the exports are checked on (kept in ``sample.npz``).
        sample_mask: cell masks (N, 1, H, W) for mask-aware models.
        card: a function of the bundle manifest returning the model card text, or None.
        overwrite: replace an existing bundle at ``out``.

    Returns:
        ``(path, manifest)``.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        BundleError: an export does not reproduce the model's outputs.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    pixels = torch.as_tensor(np.asarray(sample, dtype=np.float32))
    example = example_inputs(model, pixels)
    if sample_mask is not None and model.with_mask:
        example = (pixels, torch.as_tensor(np.asarray(sample_mask, dtype=np.float32)))
    with torch.no_grad():
        expected = model(*example).numpy()
    inputs, outputs = io_names(model)
    with atomic_directory(out) as tmp:
        exported: dict[str, dict] = {}
        for name in ["state_dict"] + [f for f in formats if f != "state_dict"]:
            fmt = FORMATS[name]
            info = fmt.export(model, tmp, example)
            model.eval()  # exporters restore the training mode of what they were given
            if fmt.runner is not None:
                feed, want = [t.numpy() for t in example], expected
                if info.get("inputs") == ["pixels"] and model.with_mask:  # exported without mask
                    feed = feed[:1]
                    with torch.no_grad():
                        want = model(example[0]).numpy()
                got = fmt.runner(tmp / info["file"])(*feed)
                diff = float(np.abs(got - want).max()) if got.size else 0.0
                if not diff <= TOLERANCE:
                    raise BundleError(
                        f"the {name} export differs from the model by {diff:.3g} (> {TOLERANCE}) "
                        f"on {len(pixels)} sample crops; drop {name} from --format and report it"
                    )
                info["max_abs_diff"] = diff
            exported[name] = info
        for filename, document in zip(JSON_FILES, (config, data, metrics, provenance)):
            _dump(tmp / filename, document)
        arrays = {"pixels": example[0].numpy(), model.output_name: expected}
        if model.with_mask:
            arrays["mask"] = example[1].numpy()
        np.savez(tmp / SAMPLE_FILE, **arrays)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "created": time.time(),
            "family": config["family"],
            "kind": config["kind"],
            "members": len(model.members),
            "task": data["task"],
            "inputs": _input_docs(inputs, data),
            "output": {
                "name": model.output_name,
                "shape": ["batch", len(config["output_names"])],
                "names": config["output_names"],
                "meaning": _output_meaning(model),
            },
            "formats": exported,
            "files": {},
        }
        if card is not None:
            (tmp / CARD_FILE).write_text(card(manifest))
        manifest["files"] = {
            str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        _dump(tmp / MANIFEST, manifest)
    return out, manifest


def _input_docs(inputs: list[str], data: dict) -> list[dict]:
    contract = DataContract.from_dict(data)
    c, h, w = contract.shape
    docs = [
        {
            "name": "pixels",
            "shape": ["batch", c, h, w],
            "dtype": "float32",
            "channels": list(contract.channel_names),
            "meaning": (
                f"raw pixel intensities as stored by cytotune ingest ({contract.dtype} cast to "
                f"float32, channels in this order); the graph applies the "
                f"{contract.normalization.method} "
                "normalisation (x - offset) / scale itself"
            ),
        }
    ]
    if "mask" in inputs:
        docs.append(
            {
                "name": "mask",
                "shape": ["batch", 1, h, w],
                "dtype": "float32",
                "meaning": "cell mask, 1 inside the cell and 0 outside; all ones = no mask",
            }
        )
    return docs


def _output_meaning(model: BundleModel) -> str:
    n = len(model.members)
    if model.classification:
        what = "softmax probabilities per class (rows sum to 1)"
        return what if n == 1 else f"{what}, the mean of the {n} members' probabilities"
    what = "predicted regression values per target"
    return what if n == 1 else f"{what}, the mean of the {n} members' predictions"


# ------------------------------------------------------------------------------ reading
def read_manifest(path: str | Path, verify: bool = True) -> dict:
    """``bundle.json`` of a bundle directory, checked for format, version and file integrity.

    Raises:
        BundleError: naming the problem (not a bundle, bad JSON, newer version, a missing,
            truncated or altered file) and the fix.
    """
    path = Path(path)
    redo = "re-create it with `cytotune pull --study STUDY ... --out DIR --overwrite`"
    if not path.is_dir():
        raise BundleError(f"bundle {path} not found (not a directory)")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(
            f"{path} is not a cytotune bundle: {MANIFEST} is missing (an interrupted copy?); "
            f"copy the whole directory again or {redo}"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON ({exc}); {redo}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{path} is not a cytotune bundle (format {found!r}, not {FORMAT!r})")
    version = manifest.get("version")
    if not isinstance(version, int) or version > VERSION or version < 1:
        raise BundleError(
            f"bundle {path} has version {version!r}, this cytotune reads version {VERSION}; "
            "upgrade cytotune (pip install -U cytotune) or re-pull it with this version"
        )
    files = manifest.get("files") or {}
    formats = manifest.get("formats") or {}
    if "state_dict" not in formats:
        raise BundleError(f"bundle {path} is incomplete: {MANIFEST} lists no state_dict; {redo}")
    required = [*JSON_FILES, *formats["state_dict"].get("files", [])]
    required += [info["file"] for info in formats.values() if "file" in info]
    for name in required:
        if name not in files:
            raise BundleError(f"bundle {path} is incomplete: {MANIFEST} lists no {name}; {redo}")
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise BundleError(
                f"bundle {path} is incomplete: {name} is missing (listed in {MANIFEST}); "
                f"copy the whole directory again or {redo}"
            )
        if not verify:
            continue
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise BundleError(
                f"bundle {path} is corrupt: {name} has {size} bytes, {MANIFEST} says "
                f"{entry['bytes']} (truncated or altered); copy it again or {redo}"
            )
        if sha256(file) != entry["sha256"]:
            raise BundleError(
                f"bundle {path} is corrupt: the sha256 of {name} does not match {MANIFEST}; "
                f"copy it again or {redo}"
            )
    return manifest


def read_json(path: str | Path, name: str) -> dict:
    file = Path(path) / name
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{file} is not valid JSON ({exc})") from exc


def build_model(path: str | Path, device: str | torch.device = "cpu") -> BundleModel:
    """Rebuild the bundle's :class:`BundleModel` from ``config.json`` + the state dicts."""
    from cytotune.engine.train.checkpoint import load_model_extra_state
    from cytotune.search_spaces.models import create_model

    path = Path(path)
    config, data = read_json(path, "config.json"), read_json(path, "data.json")
    members = []
    for i, member in enumerate(config["members"]):
        model = create_model(config["model"])
        file = path / f"weights/member_{i}.pt"
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (RuntimeError, EOFError, OSError) as exc:
            raise BundleError(
                f"bundle {path}: cannot load {file.name} for member {i} ({exc}); re-pull the bundle"
            ) from exc
        load_model_extra_state(model, member.get("model_extra", {}))
        members.append(model.eval())
    contract = DataContract.from_dict(data, f"bundle {path}: data.json")
    return (
        BundleModel(
            members,
            contract.normalization.offset,
            contract.normalization.scale,
            classification=contract.is_classification,
            with_mask=bool(config.get("mask_input")),
            tta=config.get("tta", "none"),
            square=contract.shape[-1] == contract.shape[-2],
        )
        .to(device)
        .eval()
    )
