"""Model-parameter randomisation sanity check (Adebayo et al. 2018).

An explanation that depends on what the model learned must change when the learned weights are
destroyed. Explain the trained model and a copy with randomised weights
(:func:`randomize_weights`) on the same images, then compare the maps with
:func:`randomisation_check`: high similarity means the method mostly shows the input (edges,
bright structures), not the model, and the check fails.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage, stats
from torch import nn

from ._common import to_bhw

__all__ = ["randomisation_check", "randomizable_layers", "randomize_weights", "ssim"]


def _row_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of matching rows of ``(B, N)`` arrays; 0 where a row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den > 0, (a * b).sum(axis=1) / den, 0.0)
    return np.clip(r, -1.0, 1.0)


def _minmax(x: np.ndarray) -> np.ndarray:
    """Scale each ``(H, W)`` map of ``(B, H, W)`` to [0, 1]; constant maps become 0."""
    lo = x.min(axis=(1, 2), keepdims=True)
    span = x.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.0)


def ssim(a: Any, b: Any, data_range: float = 1.0, sigma: float = 1.5) -> np.ndarray:
    """Mean structural similarity of matching ``(B, H, W)`` maps (Wang et al. 2004).

    Gaussian-weighted local statistics (sigma 1.5, an 11-px window, reflect padding), population
    covariances, K1 = 0.01, K2 = 0.03 -- the settings of ``skimage``'s ``structural_similarity``
    with ``gaussian_weights=True``. The mean skips a 5-px border, as skimage does, when the map
    is larger than 10 px on both sides, and uses every pixel otherwise (small CAMs).

    Args:
        a: ``(B, H, W)`` maps (already scaled, e.g. to [0, 1]).
        b: Maps of the same shape.
        data_range: Value range of the maps.
        sigma: Standard deviation of the Gaussian window.

    Returns:
        ``(B,)`` SSIM values.
    """
    a, b = to_bhw(a, "a"), to_bhw(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")

    def filt(x: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma), mode="reflect", truncate=3.5)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ua, ub = filt(a), filt(b)
    va, vb, cov = filt(a * a) - ua * ua, filt(b * b) - ub * ub, filt(a * b) - ua * ub
    s = ((2 * ua * ub + c1) * (2 * cov + c2)) / ((ua**2 + ub**2 + c1) * (va + vb + c2))
    pad = int(3.5 * sigma + 0.5)
    if min(a.shape[1:]) > 2 * pad:
        s = s[:, pad:-pad, pad:-pad]
    return s.mean(axis=(1, 2))


def randomisation_check(
    maps_trained: Any, maps_random: Any, threshold: float = 0.5, absolute: bool = False
) -> dict[str, Any]:
    """Similarity between maps of a trained model and of its randomised copy.

    Per image: the Spearman rank correlation of the pixel values (``scipy.stats.rankdata``, ties
    averaged), the SSIM of the min-max normalised maps (:func:`ssim`) and the Pearson
    correlation of the raw pixel values. Correlations of a constant map are undefined and count
    as 0. Channels of ``(B, C, H, W)`` maps are summed first.

    Args:
        maps_trained: ``(B, H, W)`` or ``(B, C, H, W)`` maps of the trained model.
        maps_random: Maps of the randomised model for the same images.
        threshold: The check passes when the mean Spearman correlation is below it.
        absolute: Compare ``|maps|`` (Adebayo et al. report both signed and absolute).

    Returns:
        Per-image ``spearman``, ``ssim``, ``pearson`` arrays ``(B,)``; their means
        ``spearman_mean``, ``ssim_mean``, ``pearson_mean``; ``pass_rate`` (share of images with
        Spearman below the threshold); ``threshold``; and ``passed`` (bool).
    """
    a, b = to_bhw(maps_trained, "maps_trained"), to_bhw(maps_random, "maps_random")
    if a.shape != b.shape:
        raise ValueError(f"maps_trained {a.shape} and maps_random {b.shape} must match")
    if not -1 <= threshold <= 1:
        raise ValueError(f"threshold is a Spearman correlation in [-1, 1], got {threshold!r}")
    if absolute:
        a, b = np.abs(a), np.abs(b)
    flat_a, flat_b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    spearman = _row_pearson(stats.rankdata(flat_a, axis=1), stats.rankdata(flat_b, axis=1))
    pearson = _row_pearson(flat_a, flat_b)
    sim = ssim(_minmax(a), _minmax(b))
    return {
        "spearman": spearman,
        "ssim": sim,
        "pearson": pearson,
        "spearman_mean": float(spearman.mean()),
        "ssim_mean": float(sim.mean()),
        "pearson_mean": float(pearson.mean()),
        "pass_rate": float((spearman < threshold).mean()),
        "threshold": float(threshold),
        "passed": bool(spearman.mean() < threshold),
    }


def randomizable_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters directly, top (output side) first.

    The order is the reverse of ``model.named_modules()`` registration order, the usual proxy
    for depth; the root module, if it owns parameters, is named ``""``.
    """
    names = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    return names[::-1]


def _reinit(module: nn.Module, std: float) -> None:
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
        return
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            nn.init.trunc_normal_(p, std=std, a=-2 * std, b=2 * std)


def randomize_weights(
    model: nn.Module,
    seed: int = 0,
    mode: str = "cascading",
    layers: int | str | Sequence[str] | None = None,
    std: float = 0.02,
) -> nn.Module:
    """A deep copy of ``model`` with re-initialised weights; the original is left untouched.

    Each selected module (see :func:`randomizable_layers`) is re-initialised with its own
    ``reset_parameters()`` where it has one (PyTorch's default init: Kaiming-uniform for conv and
    linear; norm layers go back to weight 1, bias 0 and fresh running statistics, which erases
    what they learned); other modules' own parameters (e.g. prototype vectors) get a truncated
    normal with ``std``. Modules are re-initialised top-down from one seeded CPU generator state,
    so a cascade is consistent (the top layers get the same values at every depth) and a seed
    gives the same copy on every device. The global RNG state is restored afterwards.

    Args:
        model: The trained model.
        seed: Seed of the re-initialisation.
        mode: ``"cascading"`` (top layers down to ``layers``), ``"full"`` (every layer),
            or ``"independent"`` (only the named ``layers``).
        layers: For ``"cascading"``: ``None`` (all layers), an int (that many top layers) or a
            module name (down to and including it). For ``"independent"``: a name or list of
            names. Must be ``None`` for ``"full"``.
        std: Standard deviation of the fallback normal init.

    Returns:
        The randomised copy (same device, same train/eval mode).
    """
    selected = selected_layers(model, mode, layers)
    out = copy.deepcopy(model)
    reinitialise(out, selected, seed, std)
    return out


def selected_layers(
    model: nn.Module, mode: str = "cascading", layers: int | str | Sequence[str] | None = None
) -> list[str]:
    """The layers :func:`randomize_weights` re-initialises for ``mode`` and ``layers``, top
    first."""
    order = randomizable_layers(model)
    if mode == "full":
        if layers is not None:
            raise ValueError("layers must be None for mode='full'; use mode='cascading'")
        selected = order
    elif mode == "cascading":
        if layers is None:
            selected = order
        elif isinstance(layers, int) and not isinstance(layers, bool):
            if not 1 <= layers <= len(order):
                raise ValueError(f"layers={layers} out of range; the model has {len(order)}")
            selected = order[:layers]
        elif isinstance(layers, str) and layers in order:
            selected = order[: order.index(layers) + 1]
        else:
            raise ValueError(f"layers must be None, an int or one of {order}, got {layers!r}")
    elif mode == "independent":
        names = [layers] if isinstance(layers, str) else list(layers or [])
        unknown = [n for n in names if n not in order]
        if not names or unknown:
            raise ValueError(f"independent mode needs layer names from {order}, got {layers!r}")
        selected = [n for n in order if n in names]
    else:
        raise ValueError(f"mode must be 'cascading', 'full' or 'independent', got {mode!r}")
    return selected


def reinitialise(model: nn.Module, selected: Sequence[str], seed: int, std: float = 0.02) -> None:
    """Re-initialise the ``selected`` layers of ``model`` in place, top-down from ``seed`` (the
    draws of :func:`randomize_weights`)."""
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in selected:
            _reinit_on_cpu(model.get_submodule(name), std)


# modules re-initialise themselves from torch's global CPU generator (``reset_parameters``
# takes no generator): threads drawing copies at once (the local explain executor's quality
# workers) take turns, or one thread's seed would reach another's draws
_GLOBAL_RNG = threading.Lock()


def _reinit_on_cpu(module: nn.Module, std: float) -> None:
    """:func:`_reinit` with the module's own tensors drawn on the CPU and moved back, so that one
    seed gives the same random copy on every device (a CUDA generator draws other numbers than
    the CPU's for the same seed, which made the check's verdict depend on the device)."""
    own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    device = own[0].device if own else torch.device("cpu")
    if device.type == "cpu":
        _reinit(module, std)
        return
    module._apply(lambda t: t.cpu(), recurse=False)
    _reinit(module, std)
    module._apply(lambda t: t.to(device), recurse=False)
