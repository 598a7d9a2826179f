"""cytotune explainers: attribution methods, population maps, prototype mosaics, quality metrics.

>>> from explainers import create_explainer, list_explainers, overlay
>>> maps = create_explainer("gradcam", model).attribute(x)  # (B, 1, H, W)
"""

from .methods import (
    Explainer,
    GradCAM,
    GradCAMPlusPlus,
    InputXGradient,
    IntegratedGradients,
    LayerCAM,
    Occlusion,
    Saliency,
    SmoothGrad,
    channel_attribution,
    create_explainer,
    list_explainers,
    overlay,
    register_explainer,
)
from .population import (
    GeometricMeanAccumulator,
    PerClassGeometricMean,
    compare_population_maps,
    correlation_summary,
    patch_correlation,
)
from .quality import (
    deletion_insertion,
    mass_inside,
    pointing_game,
    prototype_diversity,
    randomisation_check,
    randomize_weights,
)

__all__ = [
    "GeometricMeanAccumulator",
    "PerClassGeometricMean",
    "compare_population_maps",
    "correlation_summary",
    "patch_correlation",
    "deletion_insertion",
    "mass_inside",
    "pointing_game",
    "prototype_diversity",
    "randomisation_check",
    "randomize_weights",
    "Explainer",
    "GradCAM",
    "GradCAMPlusPlus",
    "InputXGradient",
    "IntegratedGradients",
    "LayerCAM",
    "Occlusion",
    "Saliency",
    "SmoothGrad",
    "channel_attribution",
    "create_explainer",
    "list_explainers",
    "overlay",
    "register_explainer",
]
