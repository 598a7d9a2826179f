"""``cytotune.load_bundle(path)``: a bundle's model with its preprocessing, and ``predict``.

>>> bundle = cytotune.load_bundle("bundles/champion")
>>> bundle.predict(crops)                      # (N, C, H, W) or (C, H, W) raw pixels
>>> bundle.predict(["cell_001.tif", "cell_002.tif"])
>>> bundle.predict("data/new_plate")           # a cytotune dataset directory
   cell_id      prediction  confidence  p(metastasizing)  p(normal)
>>> bundle.model(torch.as_tensor(crops, dtype=torch.float32))  # raw pixels -> probabilities
>>> bundle.members[0]                          # a member on normalised input (for explainers)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from cytotune.engine.train.contract import DataContract

from . import bundle as bundle_io
from .formats import FORMATS, check_requirements

BACKENDS = ("torch", "torchscript", "torch_export", "onnx")


class Bundle:
    """A loaded bundle.

    Attributes:
        path: the bundle directory.
        manifest: ``bundle.json``; ``config``, ``data`` (the data contract), ``metrics`` and
            ``provenance``: the other JSON documents.
        backend: "torch" (rebuilt with cytotune), "torchscript", "torch_export" or "onnx".
        model: with backend "torch", the :class:`BundleModel` (raw pixels in); else None.
        members: with backend "torch", the member models (normalised input, for explainers).
    """

    def __init__(self, path: str | Path, backend: str = "torch", device: str = "cpu") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
        self.path = Path(path)
        self.manifest = bundle_io.read_manifest(self.path)
        self.config = bundle_io.read_json(self.path, "config.json")
        self.data = bundle_io.read_json(self.path, "data.json")
        self.contract = DataContract.from_dict(self.data, f"bundle {self.path}: data.json")
        self.metrics = bundle_io.read_json(self.path, "metrics.json")
        self.provenance = bundle_io.read_json(self.path, "provenance.json")
        self.backend, self.device = backend, torch.device(device)
        self.model = None
        if backend == "torch":
            self.model = bundle_io.build_model(self.path, self.device)
            self._run = self._run_torch
        else:
            info = self.manifest["formats"].get(backend)
            if info is None:
                raise ValueError(
                    f"bundle {self.path} has no {backend} export (it has "
                    f"{', '.join(self.manifest['formats'])}); re-pull with --format {backend}"
                )
            check_requirements(FORMATS[backend])
            self._run = FORMATS[backend].runner(self.path / info["file"])

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"Bundle({str(self.path)!r}, family={m['family']}, kind={m['kind']}, "
            f"members={m['members']}, task={m['task']}, backend={self.backend})"
        )

    # ------------------------------------------------------------------------- contract
    @property
    def members(self) -> list[torch.nn.Module]:
        return [] if self.model is None else list(self.model.members)

    @property
    def output_names(self) -> list[str]:
        """Class names by output index, or regression target names."""
        return list(self.config["output_names"])

    @property
    def channel_names(self) -> list[str]:
        return list(self.contract.channel_names)

    @property
    def is_classification(self) -> bool:
        return self.contract.is_classification

    def normalize(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw pixels (N, C, H, W) -> the normalised float32 tensor the members take."""
        offset, scale = self.contract.normalization.arrays  # (1, C, 1, 1)
        x = torch.as_tensor(np.asarray(pixels), dtype=torch.float32)
        return (x - torch.from_numpy(offset)) / torch.from_numpy(scale)

    def _run_torch(self, pixels: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        x = torch.as_tensor(pixels, dtype=torch.float32, device=self.device)
        m = None if mask is None else torch.as_tensor(mask, dtype=torch.float32).to(self.device)
        if self.model.with_mask and m is None:
            m = torch.ones(x.shape[0], 1, *x.shape[2:], device=self.device)
        with torch.no_grad():
            return self.model(x, m).cpu().numpy() if m is not None else self.model(x).cpu().numpy()

    # ------------------------------------------------------------------------- predict
    def predict(
        self,
        inputs: Any,
        masks: np.ndarray | None = None,
        batch_size: int = 256,
        check_dtype: bool = True,
    ) -> pd.DataFrame:
        """Predict raw crops.

        Args:
            inputs: an array or tensor of raw pixels (N, C, H, W) or (C, H, W); an image file
                path or a list of them (read with the ingest readers); or a cytotune dataset
                directory (its cell masks are used by mask-aware models).
            masks: cell masks (N, H, W) or (N, 1, H, W) for array input (mask-aware models;
                without masks every pixel counts as cell).
            batch_size: crops per forward pass.
            check_dtype: refuse integer pixels of another dtype than the training data's.

        Returns:
            One row per crop: ``cell_id`` (datasets), ``path`` (files) or ``index``; for
            classification ``prediction`` (class name), ``confidence`` and ``p(<class>)`` per
            class (plus ``label`` for labelled datasets); for regression one column per target.
        """
        pixels, masks, meta = self._coerce(inputs, masks, check_dtype)
        outputs = []
        for start in range(0, len(pixels), batch_size):
            stop = start + batch_size
            chunk = np.asarray(pixels[start:stop], dtype=np.float32)
            mask = None if masks is None else masks[start:stop]
            outputs.append(self._run(chunk, mask))
        names = self.output_names
        out = np.concatenate(outputs) if outputs else np.zeros((0, len(names)), np.float32)
        frame = meta.reset_index(drop=True)
        if not self.is_classification:
            for j, name in enumerate(names):
                frame[name] = out[:, j]
            return frame
        best = out.argmax(1) if len(out) else np.zeros(0, dtype=int)
        frame["prediction"] = [names[i] for i in best]
        frame["confidence"] = out[np.arange(len(out)), best] if len(out) else []
        for j, name in enumerate(names):
            frame[f"p({name})"] = out[:, j]
        return frame

    def _coerce(
        self, inputs: Any, masks: np.ndarray | None, check_dtype: bool
    ) -> tuple[np.ndarray, np.ndarray | None, pd.DataFrame]:
        if isinstance(inputs, (str, Path)) and (Path(inputs) / "manifest.json").is_file():
            return self._from_dataset(Path(inputs))
        if isinstance(inputs, (str, Path)) or (
            isinstance(inputs, Sequence) and inputs and isinstance(inputs[0], (str, Path))
        ):
            from cytotune.engine.data.readers import read_image

            paths = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
            for p in paths:
                if not Path(p).is_file():
                    raise FileNotFoundError(f"image {p} not found")
            crops = [read_image(p) for p in paths]
            pixels = self._check(np.stack(crops) if _same_shape(crops) else crops, check_dtype)
            return pixels, None, pd.DataFrame({"path": [str(p) for p in paths]})
        if isinstance(inputs, torch.Tensor):
            inputs = inputs.detach().cpu().numpy()
        if not isinstance(inputs, np.ndarray):
            raise TypeError(
                f"predict takes an array (N, C, H, W) / (C, H, W), image path(s) or a dataset "
                f"directory, got {type(inputs).__name__}"
            )
        pixels = self._check(inputs[None] if inputs.ndim == 3 else inputs, check_dtype)
        if masks is not None:
            masks = np.asarray(masks, dtype=np.float32)
            masks = masks[:, None] if masks.ndim == 3 else masks
            if masks.shape[0] != len(pixels) or masks.shape[2:] != pixels.shape[2:]:
                raise ValueError(
                    f"masks {masks.shape} do not match the crops {pixels.shape}: give one "
                    "(H, W) mask per crop"
                )
        return pixels, masks, pd.DataFrame({"index": np.arange(len(pixels))})

    def _check(self, pixels: Any, check_dtype: bool) -> np.ndarray:
        c, h, w = self.contract.shape
        if isinstance(pixels, list):
            shapes = sorted({tuple(p.shape) for p in pixels})
            raise ValueError(
                f"crops of several shapes {shapes}; the model takes ({c}, {h}, {w}) crops "
                f"(channels {self.channel_names}); bring them to one size with `cytotune ingest "
                f"--size {h}`"
            )
        pixels = np.asarray(pixels)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (c, h, w):
            raise ValueError(
                f"crops of shape {pixels.shape} do not fit the model: it takes (N, {c}, {h}, {w}) "
                f"or ({c}, {h}, {w}) raw pixels with channels {self.channel_names} in this order"
                + (
                    f"; resize or pad the crops to {h} x {w} (e.g. `cytotune ingest --size {h}`)"
                    if pixels.ndim == 4 and pixels.shape[1] == c
                    else ""
                )
            )
        want = self.contract.dtype
        if check_dtype and pixels.dtype.kind in "iub" and pixels.dtype != np.dtype(want):
            raise ValueError(
                f"crops are {pixels.dtype} but the model was trained on {want} raw pixels; "
                f"its normalisation expects that range. Pass {want} pixels (or float32 in the "
                f"{want} range), or check_dtype=False if you know the ranges agree"
            )
        return pixels

    def _from_dataset(self, path: Path) -> tuple[np.ndarray, np.ndarray | None, pd.DataFrame]:
        from cytotune.engine.data import CellDataset

        dataset = CellDataset(path)
        manifest = dataset.manifest
        names = self.channel_names
        if sorted(manifest.channel_names) != sorted(names):
            raise ValueError(
                f"dataset {path} has channels {manifest.channel_names}, the model takes {names}"
            )
        pixels = dataset.images()
        if list(manifest.channel_names) != names:  # same channels, other order: reorder
            pixels = pixels[:, [manifest.channel_names.index(n) for n in names]]
        pixels = self._check(pixels, check_dtype=True)
        meta = dataset.metadata()
        frame = pd.DataFrame({"cell_id": meta["cell_id"].to_numpy()})
        if "label" in meta and manifest.task == "classification":
            frame["label"] = meta["label"].to_numpy()
        masks = None
        if self.config.get("mask_input") and manifest.has_mask:
            masks = dataset.masks()[:, None].astype(np.float32)
        return pixels, masks, frame


def _same_shape(arrays: list[np.ndarray]) -> bool:
    return len({a.shape for a in arrays}) == 1


def load_bundle(path: str | Path, backend: str = "torch", device: str = "cpu") -> Bundle:
    """Load a bundle directory written by ``cytotune pull``.

    Args:
        path: the bundle directory.
        backend: "torch" (rebuild the model with cytotune from the state dicts; default),
            "torchscript", "torch_export" or "onnx" (run the exported graph).
        device: torch device for the "torch" backend.

    Raises:
        BundleError: the directory is not a bundle, is incomplete, corrupt or of a newer version.
    """
    return Bundle(path, backend=backend, device=device)
