"""Input attributions: Saliency, InputXGradient, IntegratedGradients, Occlusion.

Saliency and Integrated Gradients (without ``internal_batch_size``) are computed here in plain
torch, with captum's numbers (tested against captum) and without importing it: the explain job's
default methods then never pay captum's import. InputXGradient and Occlusion call captum.

All return (B, C, H, W): one map per input channel (channels are never merged, so the share of
each stain can be read off with :func:`~cytotune.explainers.methods.channel_attribution`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._registry import register_explainer
from .base import Explainer, predict_target
from .smoothgrad import call_images


def captum_attr() -> Any:
    """The ``captum.attr`` module, or an ImportError with the install hint."""
    try:
        import captum.attr
    except ImportError as err:  # pragma: no cover - captum is a dependency
        raise ImportError(
            "this explainer needs captum: pip install 'captum>=0.7' (on the GPU machine, carry "
            "the bundle of ../shared/tools/gpu-bundle.sh)"
        ) from err
    return captum.attr


def forward_func(model: nn.Module, keys: tuple[str, ...]) -> Callable[..., Tensor]:
    """``f(x, *values)`` calling ``model(x, **dict(zip(keys, values)))`` (captum passes extra
    forward arguments positionally and batches their tensors like the input)."""

    def f(x: Tensor, *values: Any) -> Tensor:
        return model(x, **dict(zip(keys, values)))

    return f


def summed_gradients(
    forward_fn: Callable,
    inputs: tuple[Tensor, ...],
    target_ind: Any = None,
    additional_forward_args: Any = None,
) -> tuple[Tensor, ...]:
    """captum's ``compute_gradients`` with one backward seed for all outputs.

    captum differentiates ``torch.unbind(outputs)``: one scalar output per image (per image and
    step for Integrated Gradients), for each of which autograd makes its own ``ones_like`` seed.
    On the MitoCheck job on one H100 that was 646,000 ``ones_like`` calls and about a tenth of
    the job's time. Seeding the whole output with ones gives the same gradients (each output's
    seed is 1 either way).
    """
    from captum._utils.common import _run_forward

    with torch.autograd.set_grad_enabled(True):
        outputs = _run_forward(forward_fn, inputs, target_ind, additional_forward_args)
        if outputs[0].numel() != 1:
            raise ValueError("a target is needed to take gradients of a multi-output model")
        return torch.autograd.grad(outputs, inputs, grad_outputs=torch.ones_like(outputs))


class _Captum(Explainer):
    """Resolves targets and forward kwargs, then calls one captum attribution method."""

    def _call(self, cls_name: str, x: Tensor, target: Any, fk: dict, init: dict, **kw: Any):
        t = predict_target(self.model, x, target, fk)
        x = x.detach().requires_grad_(True)
        method = getattr(captum_attr(), cls_name)(forward_func(self.model, tuple(fk)), **init)
        if hasattr(method, "gradient_func"):
            method.gradient_func = summed_gradients
        return method.attribute(
            x, target=t, additional_forward_args=tuple(fk.values()) or None, **kw
        )


@register_explainer("saliency")
class Saliency(_Captum):
    """Gradient of the score with respect to each input pixel and channel (captum's Saliency,
    computed by :func:`input_gradients`).

    Args:
        model: the model, in eval mode.
        abs: absolute gradients (default True, as captum and Simonyan et al.).
        forward_kwargs: extra keyword arguments of the model's forward.
    """

    defaults = {"abs": True}

    def _attribute(self, x: Tensor, target: Any, *, abs: bool, forward_kwargs: dict) -> Tensor:
        t = predict_target(self.model, x, target, forward_kwargs)
        grads = input_gradients(self.model, x, t, forward_kwargs)
        return grads.abs() if abs else grads


def input_gradients(model: nn.Module, x: Tensor, target: Tensor, fk: dict) -> Tensor:
    """Gradient of each image's ``target`` output with respect to its pixels, (B, C, H, W): what
    captum's Saliency computes (with :func:`summed_gradients`: one backward seed for the batch),
    without importing captum. captum's import (with the matplotlib it pulls in) took 0.7 s of
    the explain job's interpreter lock, which every map worker's first batch waited for."""
    x = x.detach().requires_grad_(True)
    with torch.autograd.set_grad_enabled(True):
        out = model(x, **fk)
        if out.ndim != 2:
            raise ValueError(f"model output must be (B, outputs), got {tuple(out.shape)}")
        picked = out.gather(1, target.reshape(-1, 1))
        (grads,) = torch.autograd.grad(picked, x, grad_outputs=torch.ones_like(picked))
    return grads


@register_explainer("inputxgradient")
class InputXGradient(_Captum):
    """Input times gradient (captum InputXGradient). Options: ``forward_kwargs``."""

    def _attribute(self, x: Tensor, target: Any, *, forward_kwargs: dict) -> Tensor:
        return self._call("InputXGradient", x, target, forward_kwargs, {})


@register_explainer("integrated_gradients")
class IntegratedGradients(_Captum):
    """Integrated Gradients (Sundararajan et al. 2017, captum IntegratedGradients).

    Completeness: the attributions of an image sum to f(x) - f(baseline), up to the error of the
    ``n_steps`` quadrature.

    Args:
        model: the model, in eval mode.
        baseline: a scalar or a tensor broadcastable to x (default 0: black in every channel,
            i.e. the per-channel mean for standardised inputs).
        n_steps: integration steps (default 50).
        method: captum's quadrature, ``"gausslegendre"`` (default), ``"riemann_trapezoid"``, ...
        internal_batch_size: images per forward inside captum (None: B * n_steps at once).
        forward_kwargs: extra keyword arguments of the model's forward.
    """

    defaults = {
        "baseline": 0.0,
        "n_steps": 50,
        "method": "gausslegendre",
        "internal_batch_size": None,
    }

    @classmethod
    def passes(cls, options: dict[str, Any]) -> int:
        return int(options.get("n_steps", cls.defaults["n_steps"]))

    def _attribute(
        self,
        x: Tensor,
        target: Any,
        *,
        baseline: float | Tensor,
        n_steps: int,
        method: str,
        internal_batch_size: int | None,
        forward_kwargs: dict,
    ) -> Tensor:
        if int(n_steps) < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        if internal_batch_size is None:  # every step at once: batched here, captum's numbers
            return self._batched(x, target, baseline, int(n_steps), method, forward_kwargs)
        init = {"multiply_by_inputs": True}
        return self._call(
            "IntegratedGradients",
            x,
            target,
            forward_kwargs,
            init,
            baselines=baseline,
            n_steps=int(n_steps),
            method=method,
            internal_batch_size=internal_batch_size,
        )

    def _batched(self, x: Tensor, target, baseline, n_steps: int, method: str, fk: dict):
        """captum's Integrated Gradients (same quadrature, same step-major batch, same sums) in
        a few tensor operations: captum builds the scaled inputs, expands the targets and the
        forward arguments and rescales the gradients with about 3,000 small operations per
        call, as many kernel launches on a GPU as the model's forward and backward together,
        and it recomputes the quadrature nodes (numpy eigenvalues) on every call.

        The steps go in calls of at most :func:`call_images` images (SmoothGrad's budget; one
        step of the whole batch at the least), of equal size: 256 cells of 64 px x 50 steps on a
        GPU are 2 calls of 6,400 crops, not one of 12,800 (4 map workers' such calls took 63 GB
        of an H100)."""
        t = predict_target(self.model, x, target, fk)
        steps, alphas = quadrature(method, n_steps, x.device)
        x = x.detach()
        base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device).expand_as(x)
        # alpha * (x - base) in at least float32 (captum's Python-float alphas), back in x's
        # dtype: half-precision inputs stay half, as captum's
        d = x - base
        d_wide = d.to(torch.promote_types(d.dtype, torch.float32))
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        most = max(1, call_images(None, x) // x.shape[0])  # steps a call may hold (at least 1)
        calls = -(-n_steps // most)
        size = -(-n_steps // calls)  # steps per call, equal but for the last: at most ``most``
        total = None
        for first in range(0, n_steps, size):
            k = min(size, n_steps - first)
            step = alphas[first : first + k].view(-1, 1, 1, 1, 1) * d_wide
            scaled = (base + step.to(x.dtype)).reshape(-1, *x.shape[1:])
            if channels_last:
                scaled = scaled.contiguous(memory_format=torch.channels_last)  # as captum's cat
            scaled.requires_grad_(True)
            kw = {key: _repeat(v, k, x.shape[0]) for key, v in fk.items()}
            with torch.autograd.set_grad_enabled(True):
                out = self.model(scaled, **kw)
                if out.ndim != 2:
                    raise ValueError(f"model output must be (B, outputs), got {tuple(out.shape)}")
                picked = out.gather(1, t.repeat(k).view(-1, 1))
                (grads,) = torch.autograd.grad(picked, scaled, grad_outputs=torch.ones_like(picked))
            part = (grads.reshape(k, -1) * steps[first : first + k].view(-1, 1)).reshape(
                k, *x.shape
            )
            total = part.sum(0) if total is None else total + part.sum(0)
        return total * (x - base)


def _repeat(value: Any, n_steps: int, batch: int) -> Any:
    """A forward argument for the steps' batch (tensors of the batch repeated step-major, as
    captum's ``_expand_additional_forward_args``)."""
    if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == batch:
        return torch.cat([value] * n_steps)
    return value


RIEMANN_ALPHAS = {  # captum's alphas of n steps per Riemann rule, as (start, end) of a linspace
    "riemann_left": lambda n: (0.0, 1 - 1 / n),
    "riemann_right": lambda n: (1 / n, 1.0),
    "riemann_middle": lambda n: (1 / (2 * n), 1 - 1 / (2 * n)),
    "riemann_trapezoid": lambda n: (0.0, 1.0),
}
QUADRATURES = ("gausslegendre", *RIEMANN_ALPHAS)


@functools.lru_cache(maxsize=64)
def _nodes(method: str, n_steps: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """captum's ``approximation_parameters(method)`` (step sizes, alphas) for ``n_steps``, the
    same numbers computed the same way (tested against captum), without importing captum."""
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n_steps)
        return tuple(0.5 * weights), tuple(0.5 * (1 + nodes))
    if method not in RIEMANN_ALPHAS:
        raise ValueError(f"unknown integration method {method!r}; use one of {list(QUADRATURES)}")
    if n_steps < 2:
        raise ValueError(f"{method} needs n_steps >= 2, got {n_steps}")
    steps = [1 / n_steps] * n_steps
    if method == "riemann_trapezoid":
        steps[0] /= 2
        steps[-1] /= 2
    start, end = RIEMANN_ALPHAS[method](n_steps)
    return tuple(steps), tuple(torch.linspace(start, end, n_steps).tolist())


def quadrature(method: str, n_steps: int, device) -> tuple[Tensor, Tensor]:
    """captum's (step sizes, alphas) of ``method`` for ``n_steps``, as float32 tensors on
    ``device`` (computed once per method and step count)."""
    steps, alphas = _nodes(method, n_steps)
    return (
        torch.tensor(steps, dtype=torch.float32, device=device),
        torch.tensor(alphas, dtype=torch.float32, device=device),
    )


def occlusion_window(size: int) -> int:
    """Default square window: about 1/8 of the side (4 px at 32, 28 px at 224), at least 2."""
    return max(2, round(size / 8))


@register_explainer("occlusion")
class Occlusion(_Captum):
    """Occlusion (Zeiler & Fergus 2014, captum Occlusion): score drop when a window is blanked.

    Args:
        model: the model, in eval mode.
        window: side of the square window in pixels (default :func:`occlusion_window` of the
            smaller image side).
        stride: window step (default half the window).
        per_channel: occlude one channel at a time (default True, per-channel maps; C times the
            forwards) or all channels together (the map repeated over channels).
        baseline: value put in the window (default 0).
        perturbations_per_eval: occluded copies per forward (default 8; raise on a GPU).
        forward_kwargs: extra keyword arguments of the model's forward.
    """

    defaults = {
        "window": None,
        "stride": None,
        "per_channel": True,
        "baseline": 0.0,
        "perturbations_per_eval": 8,
    }

    def _attribute(
        self,
        x: Tensor,
        target: Any,
        *,
        window: int | None,
        stride: int | None,
        per_channel: bool,
        baseline: float | Tensor,
        perturbations_per_eval: int,
        forward_kwargs: dict,
    ) -> Tensor:
        window = int(window or occlusion_window(min(x.shape[-2:])))
        stride = int(stride or max(1, window // 2))
        if not 0 < window <= min(x.shape[-2:]) or stride < 1:
            raise ValueError(
                f"occlusion window {window} / stride {stride} do not fit a {tuple(x.shape[-2:])} "
                "image; use 1 <= window <= image side and stride >= 1"
            )
        chans = 1 if per_channel else x.shape[1]
        return self._call(
            "Occlusion",
            x,
            target,
            forward_kwargs,
            {},
            sliding_window_shapes=(chans, window, window),
            strides=(chans, stride, stride),
            baselines=baseline,
            perturbations_per_eval=int(perturbations_per_eval),
        )
