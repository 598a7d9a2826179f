"""Weight formats of a bundle, one registry entry each: ``state_dict``, ``torchscript``,
``torch_export``, ``onnx``.

Every format exports a :class:`~cytotune.engine.export.ensemble.BundleModel` (raw pixels in, with the
normalisation inside) and loads back as a runner ``(pixels, mask) -> numpy outputs``.

- ``state_dict``: the members' ``model.pt`` state dicts; rebuilt with cytotune from
  ``config.json`` (always written: it is the bundle's source of truth).
- ``torchscript``: ``torch.jit.script`` when the model scripts, else ``torch.jit.trace``; no
  registered family scripts today (the shared task head and ``CytoModel`` use Python that
  TorchScript rejects), so bundles hold traced graphs. Loads with plain ``torch.jit.load``.
- ``torch_export``: ``torch.export.export`` with a dynamic batch axis, saved with
  ``torch.export.save`` as ``model.pt2``; loads with plain ``torch.export.load(path).module()``.
  The successor of TorchScript, whose ``torch.jit.*`` functions torch deprecates.
- ``onnx``: the TorchScript-based exporter (``dynamo=False``, opset 17; the dynamo exporter
  needs ``onnxscript``), dynamic batch axis. Loads with plain ``onnxruntime``.

Traced and ONNX graphs fix the crop size (H, W) of the data contract and keep only the batch
dimension dynamic; attention weights and prototype distances are not outputs. Mask-aware models
(``Capabilities.takes_mask``, e.g. ``protopnet``) take a second input ``mask`` (N, 1, H, W);
their adaptive mask pooling does not export to ONNX, so the ONNX graph pools with the equivalent
fixed kernel (:class:`StaticMaskPrototypes`, for models declaring ``static_mask_export``) or,
when the sizes do not divide, is the mask-free path.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cytotune.search_spaces.models import capabilities_of

from cytotune.registry import Registry

from .ensemble import BundleModel

ONNX_OPSET = 17
Runner = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


@dataclass(frozen=True)
class Format:
    """A weight format: where it goes, how to write it and how to run it back."""

    name: str
    filename: str
    export: Callable[[BundleModel, Path, tuple], dict[str, Any]]
    runner: Callable[[Path], Runner] | None  # None: needs cytotune (see engine.export.bundle)
    requires: tuple[str, ...] = ()
    install: str = ""


FORMATS: Registry[Format] = Registry("bundle format")


def register_format(fmt: Format) -> Format:
    """Add a weight format under ``fmt.name``."""
    return FORMATS.add(fmt.name, fmt)


def get_format(name: str) -> Format:
    """The format registered as ``name``; unknown names raise ValueError with close matches."""
    return FORMATS.get(name)


def parse_formats(text: str | list[str]) -> list[str]:
    """``"state_dict,onnx"`` -> checked names, ``state_dict`` always included and first."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    for name in names:
        fmt = get_format(name)
        check_requirements(fmt)
    return ["state_dict"] + [n for n in dict.fromkeys(names) if n != "state_dict"]


def check_requirements(fmt: Format) -> None:
    import importlib.util

    missing = [m for m in fmt.requires if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(
            f"format {fmt.name!r} needs {', '.join(missing)}; install it with {fmt.install}"
        )


def example_inputs(model: BundleModel, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The positional inputs of an export: ``(pixels,)`` or ``(pixels, mask)``."""
    if not model.with_mask:
        return (pixels,)
    n, _, h, w = pixels.shape
    return (pixels, torch.ones(n, 1, h, w))


def io_names(model: BundleModel) -> tuple[list[str], list[str]]:
    return (["pixels", "mask"] if model.with_mask else ["pixels"]), [model.output_name]


# ------------------------------------------------------------------------------ state_dict
def _export_state_dict(model: BundleModel, directory: Path, example: tuple) -> dict[str, Any]:
    (directory / "weights").mkdir(exist_ok=True)
    files = []
    for i, member in enumerate(model.members):
        name = f"weights/member_{i}.pt"
        torch.save(member.state_dict(), directory / name)
        files.append(name)
    return {"files": files}


register_format(Format("state_dict", "weights", _export_state_dict, None))


# ------------------------------------------------------------------------------ torchscript
def _export_torchscript(model: BundleModel, directory: Path, example: tuple) -> dict[str, Any]:
    info: dict[str, Any] = {"file": "model.torchscript.pt"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation note
            scripted = torch.jit.script(model)
        info["method"] = "script"
    except Exception as exc:  # TorchScript raises many types; the reason goes in bundle.json
        reason = str(exc).strip().splitlines()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation notes and TracerWarnings
            scripted = torch.jit.trace(model, example, check_trace=False)
        info["method"] = "trace"
        info["script_error"] = next((line for line in reason if line.strip()), type(exc).__name__)
        info["note"] = (
            "traced: control flow is fixed for the contract's crop size; the batch size is free"
        )
    scripted.save(str(directory / info["file"]))
    return info


def _run_torchscript(path: Path) -> Runner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation note
        module = torch.jit.load(str(path), map_location="cpu").eval()

    return _torch_runner(module, takes_mask=len(list(module.graph.inputs())) > 2)  # self, x[, mask]


def _torch_runner(module, takes_mask: bool) -> Runner:
    """numpy in, numpy out over a loaded torch graph; all-ones masks when it takes a mask."""

    def run(pixels: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        inputs = [torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))]
        if takes_mask:
            n, _, h, w = pixels.shape
            mask = np.ones((n, 1, h, w), np.float32) if mask is None else mask
            inputs.append(torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)))
        with torch.no_grad():
            return module(*inputs).numpy()

    return run


register_format(
    Format("torchscript", "model.torchscript.pt", _export_torchscript, _run_torchscript)
)


# ------------------------------------------------------------------------------ torch_export
def _export_torch_export(model: BundleModel, directory: Path, example: tuple) -> dict[str, Any]:
    info = {"file": "model.pt2", "exporter": "torch.export.export (dynamic batch)"}
    batch = torch.export.Dim.AUTO  # the batch size stays free, the crop size is the contract's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(
            model, example, dynamic_shapes=tuple({0: batch} for _ in example), strict=False
        )
    torch.export.save(program, directory / info["file"])
    return info


def _run_torch_export(path: Path) -> Runner:
    module = torch.export.load(str(path)).module()
    placeholders = module.graph.find_nodes(op="placeholder")  # (pixels[, mask])
    return _torch_runner(module, takes_mask=len(placeholders) > 1)


register_format(Format("torch_export", "model.pt2", _export_torch_export, _run_torch_export))


# ------------------------------------------------------------------------------ onnx
def _export_onnx(model: BundleModel, directory: Path, example: tuple) -> dict[str, Any]:
    info = {"file": "model.onnx", "opset": ONNX_OPSET, "exporter": "torch.onnx (dynamo=False)"}
    try:
        data = _onnx_bytes(model, example, *io_names(model))
    except torch.onnx.errors.OnnxExporterError as exc:
        if not model.with_mask:
            raise
        static = StaticMaskPrototypes.wrap(model, example)
        if static is not None:  # the same computation with the mask pooling size fixed
            data = _onnx_bytes(static, example, *io_names(model))
            info["note"] = "mask pooled with a fixed kernel (crop size / latent size)"
            (directory / info["file"]).write_bytes(data)
            return info
        # the family pools the mask to the latent map's size read from a tensor shape, which the
        # TorchScript-based exporter cannot turn into a constant: export the mask-free path.
        pixels_only = PixelsOnly(model).eval()  # the exporter restores this mode afterwards
        data = _onnx_bytes(pixels_only, example[:1], ["pixels"], [model.output_name])
        info["inputs"] = ["pixels"]
        info["note"] = (
            "no mask input: every pixel counts as cell (the exporter cannot export the mask "
            f"pooling: {str(exc).splitlines()[0][:160]}); use TorchScript for masked inference"
        )
    (directory / info["file"]).write_bytes(data)
    return info


class StaticMaskPrototypes(torch.nn.Module):
    """A mask-aware bundle model whose mask pooling has a constant size, for the ONNX exporter.

    Members that declare ``Capabilities(static_mask_export=True)`` pool the mask with
    ``adaptive_avg_pool2d`` to their latent map's size, read from a tensor shape at run time;
    when the crop size is a multiple of the latent size that is ``avg_pool2d`` with a fixed
    kernel, which exports. The rest is the member's own ``forward_pooled_mask``; the bundle
    writer checks the result against the model with masks.
    """

    def __init__(self, model: BundleModel, kernel: tuple[int, int]) -> None:
        super().__init__()
        self.model, self.kernel = model, kernel

    @classmethod
    def wrap(cls, model: BundleModel, example: tuple) -> StaticMaskPrototypes | None:
        members = list(model.members)
        if not all(capabilities_of(m).static_mask_export for m in members):
            return None
        with torch.no_grad():
            h, w = members[0].latent(model.normalize(example[0][:1])).shape[-2:]
        height, width = example[0].shape[-2:]
        if height % h or width % w:
            return None
        return cls(model, (height // h, width // w)).eval()

    def forward(self, pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.model.normalize(pixels)  # (N, C, H, W)
        inside = torch.nn.functional.avg_pool2d(mask.float(), self.kernel)[:, 0]  # (N, h, w)
        outputs = []
        for member in self.model.members:
            out = member.forward_pooled_mask(x, inside)  # (N, K)
            outputs.append(out.float().softmax(1) if self.model.classification else out.float())
        return torch.stack(outputs).mean(0)  # (N, K)


class PixelsOnly(torch.nn.Module):
    """A mask-aware bundle model run without a mask (every pixel inside the cell)."""

    def __init__(self, model: BundleModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)


def _onnx_bytes(model: torch.nn.Module, example: tuple, inputs: list, outputs: list) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings and the exporter's deprecation note
        torch.onnx.export(
            model,
            example,
            buffer,
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in inputs + outputs},
            opset_version=ONNX_OPSET,
        )
    return buffer.getvalue()


def _run_onnx(path: Path) -> Runner:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(pixels: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        feed = {names[0]: np.ascontiguousarray(pixels, dtype=np.float32)}
        if mask is not None and len(names) == 1:
            warnings.warn(
                "this ONNX graph takes no mask (see bundle.json); the masks are ignored",
                stacklevel=3,
            )
        if len(names) > 1:  # a mask input; without masks every pixel counts as cell
            n, _, h, w = pixels.shape
            feed[names[1]] = np.ascontiguousarray(
                np.ones((n, 1, h, w), np.float32) if mask is None else mask, dtype=np.float32
            )
        return session.run(None, feed)[0]

    return run


register_format(
    Format(
        "onnx",
        "model.onnx",
        _export_onnx,
        _run_onnx,
        requires=("onnx", "onnxruntime"),
        install="pip install onnx onnxruntime (or pip install 'cytotune[dev]')",
    )
)
