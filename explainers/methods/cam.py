"""The CAM family, batched in plain torch: Grad-CAM, Grad-CAM++ and LayerCAM.

One forward and one backward (``torch.autograd.grad`` to the hooked activations) per batch.
Forward hooks live only for the call and are removed in a ``finally`` block. Weights and maps
are computed in float32 from the hooked tensors, so the methods run under bf16 autocast.

Maps are ReLU'd at the layer's resolution, then upsampled bilinearly (``align_corners=False``,
the same half-pixel convention as OpenCV's ``cv2.resize`` used by pytorch-grad-cam) to the input
size. They are not normalised unless ``normalize=True`` (per-image min-max to [0, 1]).

Several layers (``layer=[...]``) are fused: each layer's map is min-max normalised per image at
its own resolution (so no layer wins by the raw scale of its gradients), upsampled, then fused
by element-wise max (``fuse="max"``, default: fine detail of shallow layers where they respond,
the coarse localisation of deep layers elsewhere) or mean (``fuse="mean"``, what
pytorch-grad-cam does with several target layers).

A layer that runs on a folded batch, e.g. a shared per-channel trunk seeing (B*N, D, h, w), is
treated as one layer with N*D channels per image: the CAM sums the N channel trunks' evidence.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_explainer
from .base import Explainer, normalize_maps, own_thread_hook, resolve_target, scores


def hooked_gradients(
    model: nn.Module,
    x: Tensor,
    layers: list[tuple[str, nn.Module]],
    target: Any,
    forward_kwargs: dict[str, Any],
) -> tuple[list[Tensor], list[Tensor]]:
    """Activations of ``layers`` and the gradients of the target scores with respect to them.

    Returns:
        Two lists, one (B, K, h, w) tensor per layer (folded batches unfolded to channels).
    """
    return hooked_gradients_and_output(model, x, layers, target, forward_kwargs)[:2]


_SHARED = threading.local()


@contextlib.contextmanager
def shared_hooked_gradients():
    """Within the block, the CAMs of this thread on the same model, input tensor (the same
    object, unchanged since), forward arguments (the same objects), autocast state and target
    share one forward and backward: a later CAM whose layers an earlier one hooked reads its
    activations and gradients (the map workers run LayerCAM on the two deepest layers, then
    Grad-CAM and Grad-CAM++ on the deepest: one pass instead of three, the launches of two
    forwards and backwards saved per batch). :func:`release_hooked_gradients` frees what is
    held; nothing is kept after the block."""
    previous = getattr(_SHARED, "memo", None)
    _SHARED.memo = []
    try:
        yield
    finally:
        _SHARED.memo = previous


def release_hooked_gradients() -> None:
    """Drop the activations and gradients held by this thread's :func:`shared_hooked_gradients`
    block (the map workers do once their CAMs are done, before the memory-hungry methods)."""
    memo = getattr(_SHARED, "memo", None)
    if memo is not None:
        memo.clear()


def _context(model: nn.Module, x: Tensor, forward_kwargs: dict[str, Any]) -> dict[str, Any]:
    """What must be the same for a pass to be shared (compared by identity and value)."""
    device = x.device.type
    return {
        "model": model,
        "x": x,  # kept alive: no other tensor can take its place
        "version": x._version,  # changed by any in-place write
        "kwargs": dict(forward_kwargs),
        "autocast": (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)),
    }


def _same_context(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (
        a["model"] is b["model"]
        and a["x"] is b["x"]
        and a["version"] == b["version"]
        and a["autocast"] == b["autocast"]
        and a["kwargs"].keys() == b["kwargs"].keys()
        and all(a["kwargs"][k] is b["kwargs"][k] for k in a["kwargs"])
    )


def hooked_gradients_and_output(
    model: nn.Module,
    x: Tensor,
    layers: list[tuple[str, nn.Module]],
    target: Any,
    forward_kwargs: dict[str, Any],
) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """:func:`hooked_gradients` plus the model output (B, K) of the same forward, detached
    (inside :func:`shared_hooked_gradients`, reused where an earlier call had them)."""
    memo = getattr(_SHARED, "memo", None)
    names = [name for name, _ in layers]
    if memo is not None:
        context = _context(model, x, forward_kwargs)
        for entry in memo:
            if not (
                _same_context(entry["context"], context) and set(names) <= entry["layers"].keys()
            ):
                continue
            if torch.equal(resolve_target(model, entry["output"], target), entry["target"]):
                return (
                    [entry["layers"][n][0] for n in names],
                    [entry["layers"][n][1] for n in names],
                    entry["output"],
                )
    acts, grads, output, resolved = _hooked(model, x, layers, target, forward_kwargs)
    if memo is not None:  # one entry per target (a regression's outputs each get theirs)
        pairs = {n: (a, g) for n, a, g in zip(names, acts, grads)}
        memo.append({"context": context, "layers": pairs, "output": output, "target": resolved})
    return acts, grads, output


def _hooked(model, x, layers, target, forward_kwargs):
    acts: dict[int, list[Tensor]] = {i: [] for i in range(len(layers))}
    handles = []
    try:
        for i, (_, module) in enumerate(layers):
            keep = own_thread_hook(lambda m, a, out, i=i: acts[i].append(out))
            handles.append(module.register_forward_hook(keep))
        with torch.enable_grad():
            output = model(x.detach().requires_grad_(True), **forward_kwargs)
            target = resolve_target(model, output, target)
            hooked = [_single(acts[i], name, x.shape[0]) for i, (name, _) in enumerate(layers)]
            grads = torch.autograd.grad(scores(model, output, target).sum(), hooked)
    finally:
        for handle in handles:
            handle.remove()
    b = x.shape[0]
    return (
        [_unfold(a.detach(), b) for a in hooked],
        [_unfold(g, b) for g in grads],
        output.detach(),
        target,
    )


def _single(outputs: list[Any], name: str, batch: int) -> Tensor:
    if len(outputs) != 1:
        raise ValueError(
            f"layer {name!r} ran {len(outputs)} times in one forward; pass a layer that runs once"
        )
    out = outputs[0]
    if not isinstance(out, Tensor) or out.ndim != 4 or out.shape[0] % batch:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"layer {name!r} outputs {shape}; CAMs need a (B, K, h, w) feature map, pick a "
            "convolutional layer (model.feature_layers())"
        )
    return out


def _unfold(t: Tensor, batch: int) -> Tensor:
    return t.float().reshape(batch, -1, *t.shape[2:])  # (B*N, D, h, w) -> (B, N*D, h, w)


def fuse_maps(maps: list[Tensor], size: tuple[int, int], fuse: str) -> Tensor:
    """Upsample (B, h, w) maps to ``size`` and fuse them into (B, 1, H, W); see module doc."""
    if fuse not in ("max", "mean"):
        raise ValueError(f"fuse must be 'max' or 'mean', got {fuse!r}")
    if len(maps) > 1:
        maps = [normalize_maps(m) for m in maps]
    up = [F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False) for m in maps]
    stacked = torch.stack(up)  # (L, B, 1, H, W)
    return stacked.amax(0) if fuse == "max" else stacked.mean(0)


class _CAM(Explainer):
    """Shared CAM pipeline; subclasses implement :meth:`layer_map`."""

    defaults = {"normalize": False, "fuse": "max"}
    uses_layer = True

    @staticmethod
    def layer_map(acts: Tensor, grads: Tensor) -> Tensor:
        """(B, h, w) map before the ReLU from float32 activations and gradients (B, K, h, w)."""
        raise NotImplementedError

    def _attribute(
        self, x: Tensor, target: Any, *, normalize: bool, fuse: str, forward_kwargs: dict
    ) -> Tensor:
        acts, grads, output = hooked_gradients_and_output(
            self.model, x, self.layers, target, forward_kwargs
        )
        self.last_output = output  # (B, K): lets a caller reuse this forward's predictions
        maps = [F.relu(self.layer_map(a, g)) for a, g in zip(acts, grads)]
        # one layer, not normalised: the map before upsampling is the whole map (the explain
        # job stores this and upsamples where it is read)
        self.last_native = maps[0] if len(maps) == 1 and not normalize else None  # (B, h, w)
        cam = fuse_maps(maps, tuple(x.shape[-2:]), fuse)  # (B, 1, H, W)
        return normalize_maps(cam) if normalize else cam


@register_explainer("gradcam")
class GradCAM(_CAM):
    """Grad-CAM (Selvaraju et al. 2017): ReLU(sum_k mean(dS/dA_k) * A_k).

    Args:
        model: the model, in eval mode.
        layer: module path, module or list of them (fused); None = ``model.target_layer``.
        normalize: per-image min-max scaling of the output to [0, 1] (default False).
        fuse: ``"max"`` or ``"mean"`` to fuse several layers.
        forward_kwargs: extra keyword arguments of the model's forward.
    """

    @staticmethod
    def layer_map(acts: Tensor, grads: Tensor) -> Tensor:
        weights = grads.mean((2, 3), keepdim=True)  # (B, K, 1, 1)
        return (weights * acts).sum(1)


@register_explainer("gradcam++")
class GradCAMPlusPlus(_CAM):
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19 with first-order gradients).

    Channel weights are sum_ij alpha_ij * ReLU(g_ij) with
    alpha = g^2 / (2 g^2 + sum_ij(A) g^3 + 1e-6) where g != 0 (as pytorch-grad-cam).
    Options as :class:`GradCAM`.
    """

    @staticmethod
    def layer_map(acts: Tensor, grads: Tensor) -> Tensor:
        g2 = grads.pow(2)
        sum_acts = acts.sum((2, 3), keepdim=True)  # (B, K, 1, 1)
        alpha = g2 / (2 * g2 + sum_acts * g2 * grads + 1e-6)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        weights = (alpha * F.relu(grads)).sum((2, 3), keepdim=True)  # (B, K, 1, 1)
        return (weights * acts).sum(1)


@register_explainer("layercam")
class LayerCAM(_CAM):
    """LayerCAM (Jiang et al. 2021): ReLU(sum_k ReLU(g_k) * A_k), pixel-wise weights.

    Made for fusing several layers: ``LayerCAM(model, ["blocks.1", "blocks.3"])``; the explain
    job fuses the two deepest usable layers when none is given. Options as :class:`GradCAM`.
    """

    default_layers = 2

    @staticmethod
    def layer_map(acts: Tensor, grads: Tensor) -> Tensor:
        return (F.relu(grads) * acts).sum(1)
