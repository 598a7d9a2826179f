"""cytotune explainers: attribution methods, population maps, prototype mosaics, quality metrics.

>>> from cytotune.explainers import create_explainer, list_explainers, overlay
>>> maps = create_explainer("gradcam", model).attribute(x)  # (B, 1, H, W)
"""

from __future__ import annotations

from cytotune.lazy import lazy_exports

# Exported name -> submodule; imported on first use (torch stays out of `cytotune explain --help`).
_EXPORTS = {
    "Explainer": ".methods",
    "GradCAM": ".methods",
    "GradCAMPlusPlus": ".methods",
    "InputXGradient": ".methods",
    "IntegratedGradients": ".methods",
    "LayerCAM": ".methods",
    "Occlusion": ".methods",
    "Saliency": ".methods",
    "SmoothGrad": ".methods",
    "channel_attribution": ".methods",
    "create_explainer": ".methods",
    "list_explainers": ".methods",
    "overlay": ".methods",
    "register_explainer": ".methods",
    "GeometricMeanAccumulator": ".population",
    "PerClassGeometricMean": ".population",
    "compare_population_maps": ".population",
    "correlation_summary": ".population",
    "patch_correlation": ".population",
    "deletion_insertion": ".quality",
    "mass_inside": ".quality",
    "pointing_game": ".quality",
    "prototype_diversity": ".quality",
    "randomisation_check": ".quality",
    "randomize_weights": ".quality",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
