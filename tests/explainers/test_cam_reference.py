"""Grad-CAM, Grad-CAM++ and LayerCAM against pytorch-grad-cam and a hand-computed net.

pytorch-grad-cam ReLUs each map at the layer's resolution, min-max normalises it (eps 1e-7),
resizes it with ``cv2.resize`` (bilinear, half-pixel centres) and min-max normalises again; it
returns numpy (B, H, W). Our maps use the same ReLU-then-upsample order and the same
interpolation convention, so with ``normalize=True`` they match it directly at the input size;
the only difference is its eps, which keeps the gap near 1e-6. Tolerance: 1e-5 absolute on
[0, 1] maps.
"""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
from cytotune.explainers.methods import GradCAM, GradCAMPlusPlus, LayerCAM, create_explainer
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from .conftest import inputs, small_cnn

ATOL = 1e-5
METHODS = [(GradCAM, pgc.GradCAM), (GradCAMPlusPlus, pgc.GradCAMPlusPlus), (LayerCAM, pgc.LayerCAM)]
IDS = ["gradcam", "gradcam++", "layercam"]


def reference(ref_cls, model, layers, x, target):
    with ref_cls(model=model, target_layers=layers) as cam:
        return cam(x, targets=[ClassifierOutputTarget(int(t)) for t in target])  # (B, H, W)


def check(ours_cls, ref_cls, model, layer, x, target, **kw):
    ours = ours_cls(model, layer, normalize=True, **kw).attribute(x, torch.as_tensor(target))
    assert ours.shape == (x.shape[0], 1, *x.shape[2:])
    assert ours.dtype == torch.float32
    names = layer if isinstance(layer, list) else [layer]
    ref = reference(ref_cls, model, [model.get_submodule(n) for n in names], x, target)
    assert ref.max() > 0.99, "degenerate reference map (constant CAM)"
    np.testing.assert_allclose(ours[:, 0].numpy(), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("ours_cls,ref_cls", METHODS, ids=IDS)
@pytest.mark.parametrize("layer", ["backbone.layer2", "backbone.layer3"])
def test_backbone_matches_pytorch_grad_cam(backbone, ours_cls, ref_cls, layer):
    check(ours_cls, ref_cls, backbone, layer, inputs(3, 4), [0, 1, 2])


@pytest.mark.parametrize("ours_cls,ref_cls", METHODS, ids=IDS)
@pytest.mark.parametrize("in_chans", [1, 3, 4])
def test_small_cnn_matches_pytorch_grad_cam(ours_cls, ref_cls, in_chans):
    model = small_cnn(in_chans)
    check(ours_cls, ref_cls, model, "blocks.1", inputs(3, in_chans), [2, 0, 1])


@pytest.mark.parametrize("ours_cls,ref_cls", METHODS, ids=IDS)
def test_regression_matches_pytorch_grad_cam(ours_cls, ref_cls):
    """Regression: the explained score is the prediction of the chosen target."""
    model = small_cnn(3, task="regression", num_outputs=2)
    check(ours_cls, ref_cls, model, "blocks.1", inputs(2, 3), [1, 1])


def test_fuse_mean_matches_pytorch_grad_cam_multilayer(backbone):
    """fuse="mean" is pytorch-grad-cam's aggregation of several target layers."""
    layers = ["backbone.layer2", "backbone.layer3"]
    check(LayerCAM, pgc.LayerCAM, backbone, layers, inputs(2, 4), [0, 1], fuse="mean")


def test_fuse_max_is_elementwise_max_of_normalised_layers():
    """Without pooling the maps stay 32 x 32, so per-layer normalisation is at the input size."""
    model, x, layers = small_cnn(3, pool=False), inputs(2, 3), ["blocks.0", "blocks.2"]
    fused = LayerCAM(model, layers).attribute(x, 1)
    singles = [LayerCAM(model, n, normalize=True).attribute(x, 1) for n in layers]
    torch.testing.assert_close(fused, torch.maximum(*singles), atol=1e-6, rtol=0)


def test_default_layer_is_target_layer_and_default_target_is_predicted_class():
    model, x = small_cnn(4), inputs(4, 4)
    pred = model(x).argmax(1)
    ours = GradCAM(model).attribute(x)
    torch.testing.assert_close(ours, GradCAM(model, model.target_layer).attribute(x, pred))
    torch.testing.assert_close(ours, GradCAM(model, "blocks.2").attribute(x, pred))


class Tiny(nn.Module):
    """1x1 conv (known weights) -> global average pool -> linear (known weights)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 0.5]))
            self.fc.weight.copy_(torch.tensor([[1.0, 3.0], [-2.0, 1.0]]))

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize("target", [0, 1])
def test_hand_computed_gradcam_and_layercam(target):
    """S_c = sum_k V[c,k] mean(A_k), so dS/dA_k = V[c,k] / (h w) at every pixel: Grad-CAM is
    ReLU(sum_k V[c,k] A_k / (h w)) and LayerCAM ReLU(sum_k ReLU(V[c,k]) A_k / (h w))."""
    x = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]]).view(1, 1, 2, 3)
    a = np.stack([2 * x[0, 0].numpy(), -x[0, 0].numpy() + 0.5])  # (2, h, w) conv output
    v = np.array([[1.0, 3.0], [-2.0, 1.0]])[target] / 6
    gradcam = np.maximum((v[:, None, None] * a).sum(0), 0)
    layercam = np.maximum((np.maximum(v, 0)[:, None, None] * a).sum(0), 0)
    model = Tiny()
    np.testing.assert_allclose(
        GradCAM(model, "conv").attribute(x, target)[0, 0], gradcam, atol=1e-6
    )
    np.testing.assert_allclose(
        LayerCAM(model, "conv").attribute(x, target)[0, 0], layercam, atol=1e-6
    )
    # target=1, pixel (0, 0): A = (2, -0.5), V = (-2, 1) / 6 -> (-4 - 0.5) / 6 < 0 -> 0
    # target=0, pixel (0, 0): A = (2, -0.5), V = (1, 3) / 6 -> (2 - 1.5) / 6
    expected00 = {0: 0.5 / 6, 1: 0.0}[target]
    assert GradCAM(model, "conv").attribute(x, target)[0, 0, 0, 0].item() == pytest.approx(
        expected00
    )


def test_registry_builds_the_same_maps(backbone):
    x = inputs(2, 4)
    a = create_explainer("gradcam++", backbone, "backbone.layer3").attribute(x, 0)
    b = GradCAMPlusPlus(backbone, backbone.get_submodule("backbone.layer3")).attribute(x, 0)
    torch.testing.assert_close(a, b)
