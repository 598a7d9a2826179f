"""The randomisation sanity check with a verdict that means the same on every device.

:func:`randomisation_check` compares two sets of maps once. :func:`sanity_check` turns that
into a decision a user can trust (Adebayo et al. 2018, "Sanity checks for saliency maps"):

* maps are computed in fp32 (:func:`check_precision`: TF32 convolutions on a GPU, measured to
  give strict fp32's verdicts), so a GPU gives the CPU's verdicts;
* the trained model is compared with several fully re-initialised copies (``seeds``); each
  cell's similarity is the mean Spearman rho over the copies;
* a bootstrap over cells gives a confidence interval of the mean rho;
* Spearman rho is taken inside the cell mask when there is one (that a cell is brighter than
  its background is shared by every model and says nothing);
* the verdict is ``passed`` when the whole interval lies below the calibrated threshold,
  ``failed`` when it lies above, ``inconclusive`` when it straddles it (more cells narrow it);
* cascading randomisation (top layer down) shows how deep the method looks: rho after the top
  ``k`` parameter layers are re-initialised, for a few fractions of the depth.

The default threshold comes from ``bench/sanity_calibration.py`` on the synthetic tasks, whose
evidence masks give known answers (see CALIBRATED_THRESHOLD); BENCHMARKS.md records the run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from ._common import to_bhw
from .randomisation import (
    _minmax,
    _row_pearson,
    randomizable_layers,
    randomize_weights,
    ssim,
)
from .verdicts import MEANINGS, VERDICT_CODES, VERDICT_NAMES

__all__ = [
    "CALIBRATED_THRESHOLD",
    "MEANINGS",
    "SanityConfig",
    "SanityResult",
    "VERDICT_CODES",
    "VERDICT_NAMES",
    "bootstrap_ci",
    "combine",
    "check_precision",
    "check_tf32",
    "fp32",
    "sanity_check",
    "summarise",
    "verdict",
]

# bench/sanity_calibration.py (BENCHMARKS.md, "Sanity check: calibration"): the lowest rho that
# passes every known-good case (trained models whose maps find the synthetic evidence 1.2x-5x
# better than a random copy's) on its 95% upper bound; the highest such bound was 0.655. No
# threshold also fails the untrained models: their maps differ from other random models' maps
# as much as trained maps do (rho -0.04..0.37), so the check flags input-driven maps, not
# untrained models: the model verdict (learned.py) does that.
CALIBRATED_THRESHOLD = 0.66


@dataclass(frozen=True)
class SanityConfig:
    """How the check is run.

    Attributes:
        seeds: fully re-initialised copies compared with the trained model.
        cascade: fractions of the parameter layers re-initialised top down for the cascade
            curve (the head alone is always the first stage); empty to skip it.
        n_boot: bootstrap resamples of the cells.
        level: confidence level of the interval.
        threshold: the verdict's Spearman threshold.
        absolute: compare ``|maps|`` instead of signed maps.
        seed: base seed (copy ``i`` uses ``seed + i``; the bootstrap uses ``seed``).
        head_only: also score the maps after only the head is re-drawn with every seed (the
            model verdict's ``learned_head_rho``: ``seeds - 1`` maps more than the cascade);
            False leaves it out and ``metrics`` says so (``learned_head_skipped``).
    """

    seeds: int = 3
    cascade: tuple[float, ...] = (0.25, 0.5, 0.75)
    n_boot: int = 1000
    level: float = 0.95
    threshold: float = CALIBRATED_THRESHOLD
    absolute: bool = False
    seed: int = 0
    head_only: bool = True

    def __post_init__(self) -> None:
        if self.seeds < 2:
            raise ValueError(
                f"seeds must be >= 2 (two random copies make the null), got {self.seeds}"
            )
        if not all(0 < f < 1 for f in self.cascade):
            raise ValueError(f"cascade fractions must be in (0, 1), got {self.cascade}")
        if self.n_boot < 100:
            raise ValueError(f"n_boot must be >= 100 for a stable interval, got {self.n_boot}")
        if not 0.5 < self.level < 1:
            raise ValueError(f"level must be in (0.5, 1), got {self.level}")
        if not -1 <= self.threshold <= 1:
            raise ValueError(f"threshold is a Spearman rho in [-1, 1], got {self.threshold}")


@dataclass
class SanityResult:
    """Outcome of :func:`sanity_check` (``rho`` per cell: mean over the random copies)."""

    rho: np.ndarray
    null: np.ndarray
    per_seed: np.ndarray  # (seeds, B)
    n_cells: int
    rho_mean: float
    null_mean: float
    gap_mean: float
    ci_low: float
    ci_high: float
    seed_sd: float
    threshold: float
    verdict: str
    cascade: dict[str, float] = field(default_factory=dict)
    ssim_mean: float = float("nan")
    random_maps: np.ndarray | None = None  # the first random copy's maps
    head: np.ndarray | None = None  # per cell: mean |rho| after re-drawing only the head
    # None: not computed (SanityConfig.head_only False)
    head_mean: float = float("nan")
    head_low: float = float("nan")
    head_high: float = float("nan")

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def metrics(self) -> dict[str, float]:
        """Scalar metrics for ``quality.parquet`` (cascade as ``cascade_rho_<stage>``); without
        the head-only score, ``learned_head_skipped`` 1 in place of its ``learned_head_*``."""
        out = {
            "sanity_rho": self.rho_mean,
            "sanity_null_rho": self.null_mean,
            "sanity_rho_low": self.ci_low,
            "sanity_rho_high": self.ci_high,
            "sanity_gap": self.gap_mean,
            "sanity_seed_sd": self.seed_sd,
            "sanity_threshold": self.threshold,
            "sanity_verdict": VERDICT_CODES[self.verdict],
        }
        out |= {f"cascade_rho_{k}": v for k, v in self.cascade.items()}
        if self.head is None:
            out["learned_head_skipped"] = 1.0
        elif np.isfinite(self.head_mean):
            out |= {
                "learned_head_rho": self.head_mean,
                "learned_head_low": self.head_low,
                "learned_head_high": self.head_high,
            }
        return out

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("rho", "null", "per_seed", "head"):
            value = getattr(self, key)
            d[key] = None if value is None else value.tolist()
        d.pop("random_maps")
        return d


def verdict(ci_low: float, ci_high: float, threshold: float) -> str:
    """``passed`` (the rho interval lies below ``threshold``), ``failed`` (at or above it) or
    ``inconclusive`` (it straddles the threshold, or there is no interval)."""
    if not np.isfinite(ci_low) or not np.isfinite(ci_high):
        return "inconclusive"
    if ci_high < threshold:
        return "passed"
    if ci_low >= threshold:
        return "failed"
    return "inconclusive"


def bootstrap_ci(
    values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaNs dropped).

    Same definition as ``scipy.stats.bootstrap(method="percentile")``; one value gives a
    zero-width interval, none gives NaNs.
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(n_boot, values.size))
    means = values[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


@contextlib.contextmanager
def fp32(device_type: str = "cpu", tf32: bool = False):
    """fp32: autocast off; TF32 off for cuDNN convolutions and CUDA matmuls unless ``tf32``."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def check_tf32(device_type: str) -> bool:
    """Whether the check's convolutions and matmuls use TF32: on a GPU, unless
    ``CYTOTUNE_CHECK_TF32=0`` asks for strict fp32 (the CPU has no TF32).

    Measured on the MitoCheck study on one H100 (BENCHMARKS.md, "Session 17"): TF32 gave the
    verdict of strict fp32 for 15 of 15 (trial, method) pairs, three of them within 0.07 of the
    threshold, with rho within 0.003 of fp32's (bootstrap intervals 0.0-0.14 wide), and took
    the quality stage from 25.1 to 15.2 s. bf16 autocast also agreed (within 0.003) but was no
    faster, and on the CPU it moved rho by up to 0.15, so the check never uses it.
    """
    if device_type != "cuda":
        return False
    value = os.environ.get("CYTOTUNE_CHECK_TF32", "").strip() or "1"
    if value not in ("0", "1"):
        raise ValueError(f"CYTOTUNE_CHECK_TF32 must be 0 (strict fp32) or 1 (TF32), got {value!r}")
    return value == "1"


def check_precision(device_type: str = "cpu"):
    """The sanity check's arithmetic: fp32 values, autocast off, TF32 where
    :func:`check_tf32` allows it (``CYTOTUNE_CHECK_BF16=1``, to measure: bf16 autocast on a
    GPU)."""
    value = os.environ.get("CYTOTUNE_CHECK_BF16", "").strip() or "0"
    if value not in ("0", "1"):
        raise ValueError(f"CYTOTUNE_CHECK_BF16 must be 0 (the default) or 1, got {value!r}")
    if device_type == "cuda" and value == "1":  # measured: not reproducible (BENCHMARKS.md)
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return fp32(device_type, tf32=check_tf32(device_type))


def spearman_rows(a: np.ndarray, b: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
    """Spearman rho of matching ``(B, C, H, W)`` / ``(B, H, W)`` maps (channels summed), over
    the pixels inside ``masks`` (``(B, H, W)``) when given; 0 for a constant map, NaN for a
    cell with fewer than 3 pixels in its mask."""
    return spearman_of_ranks(pixel_ranks(a, masks, "a"), pixel_ranks(b, masks, "b"))


def pixel_ranks(maps: np.ndarray, masks: np.ndarray | None = None, name: str = "maps"):
    """Average ranks (``scipy.stats.rankdata``) of each map's pixels, channels summed: a
    ``(B, H * W)`` array, or with ``masks`` one array of the pixels inside each cell's mask
    (None for a cell with fewer than 3). Ranked once, a map is compared with many others."""
    x = to_bhw(maps, name)
    if masks is None:
        return stats.rankdata(x.reshape(len(x), -1), axis=1)
    masks = np.asarray(masks) > 0
    if masks.shape != x.shape:
        raise ValueError(f"masks {masks.shape} must match the maps {x.shape}")
    return [stats.rankdata(x[i][m]) if m.sum() >= 3 else None for i, m in enumerate(masks)]


def spearman_of_ranks(ra, rb) -> np.ndarray:
    """Spearman rho per cell from two :func:`pixel_ranks` results (the Pearson r of the ranks,
    as ``randomisation_check`` computes it)."""
    if not isinstance(ra, list):
        return _row_pearson(ra, rb)
    return np.array(
        [np.nan if x is None else _row_pearson(x[None], y[None])[0] for x, y in zip(ra, rb)]
    )


def mean_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of the min-max scaled maps (``randomisation_check``'s ``ssim_mean``)."""
    return float(ssim(_minmax(to_bhw(a, "a")), _minmax(to_bhw(b, "b"))).mean())


def cascade_stages(model: nn.Module, fractions) -> dict[str, int]:
    """Stage label -> number of top parameter layers re-initialised (``head`` first)."""
    total = len(randomizable_layers(model))
    stages = {"head": 1}
    for f in fractions:
        k = max(1, min(total, round(f * total)))
        label = f"{round(100 * f)}pct"
        if k not in stages.values():
            stages[label] = k
    return stages


def sanity_check(
    attribute: Callable[[nn.Module], torch.Tensor],
    model: nn.Module,
    config: SanityConfig = SanityConfig(),
    trained_maps: torch.Tensor | None = None,
    masks: np.ndarray | None = None,
    randomize: Callable[..., nn.Module] = randomize_weights,
) -> SanityResult:
    """Randomisation sanity check of one method on one batch of cells.

    Per cell: ``rho``, the Spearman correlation between the trained model's map and each random
    copy's map (mean over copies); the verdict compares the bootstrap interval of the mean rho
    with ``config.threshold``. For reference, ``null`` is the correlation between the maps of two
    random copies (what two models that learned nothing share: the input) and ``gap = null -
    rho``.

    Args:
        attribute: ``model -> maps`` of the method on the fixed batch (the same cells and
            targets for every model); called inside :func:`check_precision`.
        model: the trained model (left untouched; copies are randomised).
        config: seeds, cascade, bootstrap and threshold.
        trained_maps: the trained model's maps when already computed (in fp32).
        masks: ``(B, H, W)`` cell masks: correlate only the pixels inside each cell (the
            trivial agreement "cell brighter than background" is left out); None: every pixel.
        randomize: makes the random copies (``randomize_weights``'s signature); a memo of it
            lets several methods of one model share the copies.

    Returns:
        A :class:`SanityResult`.
    """
    device = next(model.parameters()).device.type

    def maps_of(m: nn.Module) -> np.ndarray:
        with check_precision(device):
            maps = attribute(m).detach().float().cpu().numpy()
        return np.abs(maps) if config.absolute else maps

    def ranks_of(maps: np.ndarray):
        return pixel_ranks(maps, masks)

    a = trained_maps.detach().float().cpu().numpy() if trained_maps is not None else maps_of(model)
    randoms = [
        maps_of(randomize(model, seed=config.seed + i, mode="full").eval())
        for i in range(config.seeds)
    ]
    if config.absolute:
        a = np.abs(a)
    ranked_a = ranks_of(a)  # ranked once, compared with every copy

    def rho_of(maps: np.ndarray) -> np.ndarray:
        return spearman_of_ranks(ranked_a, ranks_of(maps))

    ranked = [ranks_of(b) for b in randoms]
    per_seed = np.stack([spearman_of_ranks(ranked_a, r) for r in ranked])  # (seeds, B)
    ssim_mean = float(np.mean([mean_ssim(a, b) for b in randoms]))
    pairs = [(i, (i + 1) % len(randoms)) for i in range(len(randoms) if len(randoms) > 2 else 1)]
    null = np.mean([spearman_of_ranks(ranked[i], ranked[j]) for i, j in pairs], axis=0)  # (B,)
    cascade, first_head = {}, None
    for label, k in cascade_stages(model, config.cascade).items():
        partial = randomize(model, seed=config.seed, mode="cascading", layers=k).eval()
        rho_k = rho_of(maps_of(partial))
        cascade[label] = float(np.nanmean(rho_k))
        if label == "head":
            first_head = rho_k
    head = None
    if config.head_only and first_head is not None:
        head = head_only_rho(model, first_head, maps_of, rho_of, config, randomize)
    return summarise(
        per_seed,
        null,
        cascade,
        config,
        ssim_mean=ssim_mean,
        random_maps=randoms[0],
        head=head,
    )


def head_only_rho(
    model, first, maps_of, rho_of, config: SanityConfig, randomize=randomize_weights
) -> np.ndarray:
    """Per cell: mean |rho| between the trained maps and the maps after only the head is
    re-drawn (``rho_of(maps)``), over ``config.seeds`` heads (``first``: the cascade's head
    stage, seed ``config.seed``). |rho|: a new head may flip the sign of a map without moving
    it."""
    rhos = [first]
    for i in range(1, config.seeds):
        partial = randomize(model, seed=config.seed + i, mode="cascading", layers=1)
        rhos.append(rho_of(maps_of(partial.eval())))
    return np.abs(np.stack(rhos)).mean(0)  # (B,)


def summarise(
    per_seed: np.ndarray,
    null: np.ndarray,
    cascade: dict[str, float],
    config: SanityConfig,
    ssim_mean: float = float("nan"),
    random_maps: np.ndarray | None = None,
    head: np.ndarray | None = None,
) -> SanityResult:
    """A :class:`SanityResult` from per-cell correlations (``per_seed`` (seeds, B), ``null``
    (B,), optionally the head-only ``head`` (B,)): the bootstrap intervals of the mean rho and
    of the mean head-only |rho|, and the verdict."""
    rho = np.nanmean(per_seed, axis=0) if per_seed.size else np.zeros(0)
    low, high = bootstrap_ci(rho, config.n_boot, config.level, config.seed)
    head_low, head_high = (
        bootstrap_ci(head, config.n_boot, config.level, config.seed)
        if head is not None
        else (float("nan"), float("nan"))
    )

    def mean(v) -> float:
        v = np.asarray(v, dtype=float)
        return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")

    return SanityResult(
        rho=rho,
        null=null,
        per_seed=per_seed,
        n_cells=int(np.isfinite(rho).sum()),
        rho_mean=mean(rho),
        null_mean=mean(null),
        gap_mean=mean(null - rho),
        ci_low=low,
        ci_high=high,
        seed_sd=float(np.nanmean(per_seed, axis=1).std()) if per_seed.size else float("nan"),
        threshold=config.threshold,
        verdict=verdict(low, high, config.threshold),
        cascade=cascade,
        ssim_mean=ssim_mean,
        random_maps=random_maps,
        head=head,
        head_mean=mean(head) if head is not None else float("nan"),
        head_low=head_low,
        head_high=head_high,
    )


def combine(parts: list[SanityResult], config: SanityConfig) -> SanityResult:
    """One result over the cells of several parts (e.g. one per fold model): cells pooled,
    cascade values averaged with the parts' cell counts as weights."""
    if not parts:
        raise ValueError("combine needs at least one SanityResult")
    per_seed = np.concatenate([p.per_seed for p in parts], axis=1)
    null = np.concatenate([p.null for p in parts])
    weights = np.array([p.n_cells for p in parts], dtype=float)
    cascade = {
        k: float(np.average([p.cascade.get(k, np.nan) for p in parts], weights=weights))
        for k in parts[0].cascade
    }
    ssim = float(np.average([p.ssim_mean for p in parts], weights=weights))
    heads = [p.head for p in parts]
    head = None if any(h is None for h in heads) else np.concatenate(heads)
    return summarise(per_seed, null, cascade, config, ssim_mean=ssim, head=head)
