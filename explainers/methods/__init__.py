"""Attribution methods: one class per method, one ``attribute()`` signature, one registry.

>>> from cytotune.explainers.methods import create_explainer, list_explainers
>>> list_explainers("*cam*")
['gradcam', 'gradcam++', 'layercam']
>>> cam = create_explainer("layercam", model, layer=["blocks.1", "blocks.3"])
>>> maps = cam.attribute(x, target=None, normalize=True)  # (B, 1, H, W)
"""

from ._registry import create_explainer, get_explainer_class, list_explainers, register_explainer
from .base import Explainer, normalize_maps, resolve_layer, resolve_target
from .cam import GradCAM, GradCAMPlusPlus, LayerCAM, hooked_gradients
from .channels import channel_attribution, channel_colors, colormap, overlay
from .gradient import InputXGradient, IntegratedGradients, Occlusion, Saliency
from .smoothgrad import SmoothGrad

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
    "normalize_maps",
    "overlay",
    "register_explainer",
    "resolve_layer",
    "resolve_target",
]
