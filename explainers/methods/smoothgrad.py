"""SmoothGrad (Smilkov et al. 2017): the mean attribution over noisy copies of the input.

A wrapper around any explainer (gradient methods and CAMs alike). It draws the noise from its
own seeded ``torch.Generator`` instead of the global RNG, so maps are reproducible and the
caller's random state is untouched. The noise is laid out exactly as captum's ``NoiseTunnel``
draws it (image-major, ``n`` copies per image), so with the same seed it reproduces
``NoiseTunnel(...).attribute(x, nt_type="smoothgrad", stdevs=sigma)`` after
``torch.manual_seed(seed)`` on CPU; unlike NoiseTunnel it also wraps the CAM methods and bounds
memory by ``batch_size``.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import torch
from torch import Tensor, nn

from ._registry import get_explainer_class, register_explainer
from .base import Explainer, LayerSpec, check_input, predict_target


@register_explainer("smoothgrad")
class SmoothGrad:
    """Mean (or mean square) of a base explainer's attributions over Gaussian-noised inputs.

    Args:
        base: the explainer to smooth, e.g. ``Saliency(model)`` or ``GradCAM(model)``.
        sigma: noise standard deviation in input units (inputs are standardised per channel,
            so 0.15 is 15% of a channel's spread).
        n: noisy copies per image.
        seed: generator seed (None: drawn from the global RNG, not reproducible).
        squared: average the squared attributions (SmoothGrad-Squared).
        batch_size: images per base call (noisy copies of several images go in one call);
            None (default): at least 256, more for small crops (about 33M input values per
            call on a GPU: 8,192 images of 64 x 64 px, since a call on small crops costs its
            launches more than its arithmetic; 4M on the CPU).

    Example:
        >>> sg = SmoothGrad(Saliency(model), sigma=0.15, n=25)
        >>> attr = sg.attribute(x)  # (B, C, H, W)
    """

    name = "smoothgrad"

    def __init__(
        self,
        base: Explainer,
        sigma: float = 0.15,
        n: int = 25,
        *,
        seed: int | None = 0,
        squared: bool = False,
        batch_size: int | None = None,
    ):
        if not hasattr(base, "attribute") or not hasattr(base, "model"):
            raise TypeError(f"base must be an explainer (with .model and .attribute), got {base!r}")
        self.base = base
        self.options = self._check(
            {"sigma": sigma, "n": n, "seed": seed, "squared": squared, "batch_size": batch_size}
        )

    @classmethod
    def create(
        cls, model: nn.Module, layer: LayerSpec = None, base: str | Explainer = "saliency", **kw
    ) -> SmoothGrad:
        """Factory hook: ``create_explainer("smoothgrad", model, base="gradcam", sigma=0.1)``.

        Options other than SmoothGrad's own go to the base explainer.
        """
        own = {k: kw.pop(k) for k in ("sigma", "n", "seed", "squared", "batch_size") if k in kw}
        if isinstance(base, str):
            base = get_explainer_class(base).create(model, layer, **kw)
        elif layer is not None or kw:
            raise ValueError("with an explainer instance as base, set layer and options on it")
        return cls(base, **own)

    @classmethod
    def passes(cls, options: dict[str, Any]) -> int:
        """``n`` noisy copies, each costing the base method's passes."""
        own = ("sigma", "n", "seed", "squared", "batch_size", "base")
        base = options.get("base", "saliency")
        base_passes = (
            get_explainer_class(base).passes({k: v for k, v in options.items() if k not in own})
            if isinstance(base, str)
            else 1
        )
        return int(options.get("n", 25)) * base_passes

    @property
    def model(self) -> nn.Module:
        return self.base.model

    @staticmethod
    def _check(opts: dict[str, Any]) -> dict[str, Any]:
        if not float(opts["sigma"]) >= 0:
            raise ValueError(f"sigma must be >= 0, got {opts['sigma']}")
        for key in ("n", "batch_size"):
            if opts[key] is not None and int(opts[key]) < 1:
                raise ValueError(f"{key} must be >= 1, got {opts[key]}")
        return opts

    def attribute(self, x: Tensor, target: Any = None, **options: Any) -> Tensor:
        """Smoothed attribution, shaped like the base explainer's output.

        Args:
            x: input batch (B, C, H, W).
            target: as for every explainer; None is resolved once on the clean input.
            **options: ``sigma``, ``n``, ``seed``, ``squared``, ``batch_size`` overrides; any
                other option (e.g. ``forward_kwargs``, ``normalize``) goes to the base.
        """
        own = {k: options.pop(k) for k in list(options) if k in self.options}
        opts = self._check({**self.options, **own})
        x = check_input(self.model, x)
        base_fk = getattr(self.base, "options", {}).get("forward_kwargs")
        fk = dict(options.pop("forward_kwargs", None) or base_fk or {})
        target = predict_target(self.model, x, target, fk)  # (B,)
        n, b = int(opts["n"]), x.shape[0]
        gen = None
        if opts["seed"] is not None:
            gen = torch.Generator(device=x.device).manual_seed(int(opts["seed"]))
        chunk = max(1, call_images(opts["batch_size"], x) // n)
        out = []
        for start in range(0, b, chunk):
            xs = x[start : start + chunk]  # (b, C, H, W)
            noise = torch.randn((xs.shape[0], n, *xs.shape[1:]), generator=gen, device=x.device)
            noisy = (xs.unsqueeze(1) + opts["sigma"] * noise.to(x.dtype)).flatten(0, 1)
            idx = torch.arange(start, start + xs.shape[0], device=x.device).repeat_interleave(n)
            kw = {k: v[idx] if _batched(v, b) else v for k, v in fk.items()}
            attr = self.base.attribute(noisy, target[idx], forward_kwargs=kw, **options)
            attr = attr.pow(2) if opts["squared"] else attr
            out.append(attr.reshape(xs.shape[0], n, *attr.shape[1:]).mean(1))
        return torch.cat(out)

    def __repr__(self) -> str:
        return f"SmoothGrad({self.base!r}, sigma={self.options['sigma']}, n={self.options['n']})"


# input values per base call when ``batch_size`` is None (and never fewer than 256 images).
# On a GPU 8,192 crops of 64 x 64 px, so a batch of 128 such cells with n = 25 is one call (the
# MitoCheck job was bound by kernel launches: 4 calls of 1,024 crops launched 4 times the
# kernels of one), and 256 of 224 x 224 x 3 as before; on the CPU, where arithmetic is the
# cost and memory is shared, 1,024 of 64 x 64 px (a ResNet-50's 3,200-crop call took 22 GB)
CALL_VALUES = 1 << 22
CALL_VALUES_GPU = 1 << 25


_LIMIT = threading.local()


@contextlib.contextmanager
def call_limit(values: int | None):
    """Default-sized calls of at most ``values`` input values in this thread, inside the block
    (None: no new limit; nested limits keep the smaller): the explain job's quality calls in
    fp32, and its calls again after the GPU ran out of memory."""
    previous = getattr(_LIMIT, "values", None)
    if values is not None:
        _LIMIT.values = int(values) if previous is None else min(int(values), previous)
    try:
        yield
    finally:
        _LIMIT.values = previous


def current_call_limit() -> int | None:
    """This thread's :func:`call_limit` (None: none)."""
    return getattr(_LIMIT, "values", None)


def call_images(batch_size: int | None, x: Tensor) -> int:
    """Images per base call: ``batch_size``, or by default as many as hold about
    ``CALL_VALUES_GPU`` (on a GPU) or ``CALL_VALUES`` input values (at least 256), or the
    :func:`call_limit` of this thread where it is smaller (at least 1)."""
    if batch_size is not None:
        return int(batch_size)
    values = CALL_VALUES_GPU if x.is_cuda else CALL_VALUES
    limit = current_call_limit()
    if limit is not None and limit < values:
        return max(1, limit // max(1, x[0].numel()))
    return max(256, values // max(1, x[0].numel()))


def _batched(value: Any, batch: int) -> bool:
    return isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == batch
