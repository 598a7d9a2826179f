"""Attribution methods: one class per method, one ``attribute()`` signature, one registry.

>>> from cytotune.explainers.methods import create_explainer, list_explainers
>>> list_explainers("*cam*")
['gradcam', 'gradcam++', 'layercam']
>>> cam = create_explainer("layercam", model, layer=["blocks.1", "blocks.3"])
>>> maps = cam.attribute(x, target=None, normalize=True)  # (B, 1, H, W)
"""

from __future__ import annotations

from cytotune.lazy import lazy_exports

from ._registry import (
    create_explainer,
    get_explainer_class,
    list_explainers,
    method_passes,
    register_explainer,
)

# Exported name -> submodule, imported on first use: the registry (and the built-in methods'
# names, registered lazily) and the numpy colour helpers load without torch.
_EXPORTS = {
    "Explainer": ".base",
    "normalize_maps": ".base",
    "resolve_layer": ".base",
    "resolve_target": ".base",
    "GradCAM": ".cam",
    "GradCAMPlusPlus": ".cam",
    "LayerCAM": ".cam",
    "hooked_gradients": ".cam",
    "channel_attribution": ".channels",
    "channel_colors": ".channels",
    "colormap": ".channels",
    "overlay": ".channels",
    "InputXGradient": ".gradient",
    "IntegratedGradients": ".gradient",
    "Occlusion": ".gradient",
    "Saliency": ".gradient",
    "SmoothGrad": ".smoothgrad",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
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
    "channel_colors",
    "colormap",
    "create_explainer",
    "get_explainer_class",
    "hooked_gradients",
    "list_explainers",
    "method_passes",
    "normalize_maps",
    "overlay",
    "register_explainer",
    "resolve_layer",
    "resolve_target",
]
