"""The explainer base class and what every method shares: layer, target and input checks.

Every method has one signature::

    explainer = Method(model, layer=None, **options)
    attr = explainer.attribute(x, target=None, **options)  # options override per call

``x`` is an N-channel float batch (B, C, H, W). ``target`` is an int, a (B,) tensor of output
indices, or None: the predicted class for classification, output 0 for regression. The score
explained is ``model.score(output, target)``: the class logit, or for regression the
prediction itself ("higher prediction").
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from cytotune.search_spaces.config import close_matches as _hint
from torch import Tensor, nn

LayerSpec = str | nn.Module | Sequence[str | nn.Module] | None


def own_thread_hook(fn: Callable) -> Callable:
    """A forward hook that calls ``fn(module, inputs, output)`` only for forwards run by the
    thread that made it: the explain job's threads share one copy of each model, and a hook
    registered by one thread also fires for the others' forwards through that model."""
    owner = threading.get_ident()

    def hook(module, inputs, output) -> None:  # None: the output stays unchanged
        if threading.get_ident() == owner:
            fn(module, inputs, output)

    return hook


def is_classification(model: nn.Module) -> bool:
    """True unless the model carries a regression ``task`` (models without one: classifiers)."""
    task = getattr(model, "task", None)
    return bool(getattr(task, "is_classification", True))


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> tuple[str, nn.Module]:
    """``(path, module)`` of a layer given by module path, module, or None (``target_layer``)."""
    if layer is None:
        if not hasattr(model, "target_layer"):
            raise ValueError(
                f"{type(model).__name__} has no target_layer; pass layer= (a module path such as "
                f"{next((n for n, _ in model.named_modules() if n), 'features')!r} or a module)"
            )
        layer = model.target_layer
    if isinstance(layer, str):
        try:
            return layer, model.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            feats = list(model.feature_layers()) if hasattr(model, "feature_layers") else []
            raise ValueError(
                f"unknown layer {layer!r}{_hint(layer, names)}; pass a module path of the model"
                + (f", e.g. one of its feature layers {feats}" if feats else "")
            ) from None
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise ValueError(
            f"layer {type(layer).__name__} is not a submodule of {type(model).__name__}; "
            "pass one of the model's own modules or its path"
        )
    raise TypeError(f"layer must be a module path, a module or None, got {layer!r}")


def resolve_layers(model: nn.Module, layer: LayerSpec) -> list[tuple[str, nn.Module]]:
    """One or several layers (a list fuses their maps); duplicates are dropped."""
    specs = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    if not specs:
        raise ValueError("layer list is empty; pass at least one module path or module")
    out: list[tuple[str, nn.Module]] = []
    for spec in specs:
        name, module = resolve_layer(model, spec)
        if all(module is not m for _, m in out):
            out.append((name, module))
    return out


def resolve_target(model: nn.Module, output: Tensor, target: Any) -> Tensor:
    """Output indices (B,) long for a batch's ``output`` (B, K); see the module docstring."""
    if output.ndim != 2:
        raise ValueError(f"model output must be (B, outputs), got shape {tuple(output.shape)}")
    b, k = output.shape
    if target is None:
        if is_classification(model):
            return output.detach().argmax(1)
        return torch.zeros(b, dtype=torch.long, device=output.device)
    if isinstance(target, bool) or not isinstance(target, (int, np.integer, Tensor, list, tuple)):
        raise TypeError(
            f"target must be an int, a (B,) tensor of output indices or None, got {target!r}"
        )
    t = torch.as_tensor(target, device=output.device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(
            f"target holds output indices (integers), got dtype {t.dtype}; for regression pass "
            "the index of the target to explain, not its value"
        )
    if t.ndim == 0:
        t = t.expand(b)
    if tuple(t.shape) != (b,):
        raise ValueError(
            f"target must be an int or a ({b},) tensor of output indices for a batch of {b}, "
            f"got shape {tuple(t.shape)}; explain several targets with one call per target"
        )
    bad = t[(t < 0) | (t >= k)]
    if bad.numel():
        raise ValueError(f"target index {bad[0].item()} out of range for a model with {k} outputs")
    return t.long()


def scores(model: nn.Module, output: Tensor, target: Tensor) -> Tensor:
    """(B,) explained scores: ``model.score`` when the model has one, else the target logit."""
    if hasattr(model, "score"):
        return model.score(output, target)
    return output.gather(1, target.view(-1, 1)).squeeze(1)


def predict_target(model: nn.Module, x: Tensor, target: Any, forward_kwargs: dict) -> Tensor:
    """Resolve ``target`` before an attribution that does its own forward passes (captum)."""
    num = getattr(getattr(model, "task", None), "num_outputs", None)
    if target is not None and num is not None:
        return resolve_target(model, x.new_empty(x.shape[0], num), target)
    with torch.no_grad():
        return resolve_target(model, model(x, **forward_kwargs), target)


def check_input(model: nn.Module, x: Any) -> Tensor:
    """Validate an input batch: a float tensor (B, C, H, W) with the model's channel count."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor (B, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"x must be a batch (B, C, H, W), got shape {tuple(x.shape)}; use x[None]")
    if not x.is_floating_point():
        raise ValueError(f"x must be a float tensor, got dtype {x.dtype}; convert with x.float()")
    chans = getattr(model, "in_chans", None)
    if chans is not None and x.shape[1] != chans:
        raise ValueError(f"model takes {chans} channels, got input {tuple(x.shape)}")
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "explainers need autograd: call attribute() outside torch.inference_mode()"
        )
    return x.clone() if x.is_inference() else x


def normalize_maps(maps: Tensor) -> Tensor:
    """Per-image min-max scaling to [0, 1] over all but the batch dim; constant maps -> 0."""
    flat = maps.flatten(1)
    lo = flat.min(1).values.view(-1, *[1] * (maps.ndim - 1))
    span = flat.max(1).values.view_as(lo) - lo
    return torch.where(span > 0, (maps - lo) / span.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)


class Explainer:
    """Base of every attribution method.

    Subclasses list their options and defaults in ``defaults`` and implement
    ``_attribute(x, target, **options)``. Every method also takes ``forward_kwargs``: extra
    keyword arguments of the model's forward (e.g. ``{"mask": mask}`` for ProtoPNet); tensors in
    it are batched like ``x``.

    Args:
        model: the model, in eval mode (batch-norm in train mode would mix the batch).
        layer: for CAM methods, the layer(s) to hook; must be None for input attributions.
        **options: method options (see the class's ``defaults``), overridable per call.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    uses_layer: ClassVar[bool] = False
    # how many of the deepest usable layers a CAM method hooks when no layer is given
    default_layers: ClassVar[int] = 1

    def __init__(self, model: nn.Module, layer: LayerSpec = None, **options: Any):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        if self.uses_layer:
            self.layers = resolve_layers(model, layer)
        elif layer is not None:
            raise ValueError(
                f"{type(self).__name__} attributes the input pixels; got layer={layer!r}, pass "
                "layer=None (layers are for the CAM methods)"
            )
        else:
            self.layers = []
        self.options = self._merge({"forward_kwargs": None, **self.defaults}, options)

    @classmethod
    def create(cls, model: nn.Module, layer: LayerSpec = None, **kwargs: Any) -> Explainer:
        """Factory hook used by :func:`create_explainer`."""
        return cls(model, layer, **kwargs)

    @classmethod
    def passes(cls, options: dict[str, Any]) -> int:
        """Forward and backward passes per image with ``options``: what one map costs against
        a CAM's one (the explain job's quality schedules its costliest work first)."""
        return 1

    def _merge(self, base: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        for key in options:
            if key not in base:
                raise ValueError(
                    f"{type(self).__name__} has no option {key!r}{_hint(key, list(base))}; "
                    f"options: {sorted(base)}"
                )
        return {**base, **options}

    def attribute(self, x: Tensor, target: Any = None, **options: Any) -> Tensor:
        """Attribution of ``target``'s score to the input.

        Args:
            x: input batch (B, C, H, W).
            target: int, (B,) tensor of output indices, or None (predicted class / output 0).
            **options: per-call overrides of the method options.

        Returns:
            (B, C, H, W) per-channel attributions, or (B, 1, H, W) maps for CAM methods.
        """
        opts = self._merge(self.options, options)
        opts["forward_kwargs"] = dict(opts["forward_kwargs"] or {})
        return self._attribute(check_input(self.model, x), target, **opts)

    def _attribute(self, x: Tensor, target: Any, **options: Any) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        layers = f", layer={[n for n, _ in self.layers]}" if self.layers else ""
        return f"{type(self).__name__}({type(self.model).__name__}{layers})"
