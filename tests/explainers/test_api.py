"""Registry, targets, layers, hooks, autocast and error messages of the explainer API."""

from __future__ import annotations

import pytest
import torch
from cytotune.explainers.methods import (
    GradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    Saliency,
    SmoothGrad,
    create_explainer,
    list_explainers,
    register_explainer,
)
from cytotune.search_spaces.models import create_model
from torch import nn

from .conftest import inputs, small_cnn


def no_hooks(model: nn.Module) -> bool:
    return all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks) for m in model.modules()
    )


def test_registry_lists_and_builds():
    assert list_explainers("*cam*") == ["gradcam", "gradcam++", "layercam"]
    assert {"saliency", "inputxgradient", "integrated_gradients", "occlusion", "smoothgrad"} <= set(
        list_explainers()
    )
    model = small_cnn(3)
    assert isinstance(create_explainer("gradcam", model), GradCAM)
    sg = create_explainer("smoothgrad", model, "blocks.1", base="layercam", sigma=0.1, n=2)
    assert isinstance(sg, SmoothGrad)
    assert isinstance(sg.base, LayerCAM)
    assert sg.attribute(inputs(2, 3)).shape == (2, 1, 32, 32)


def test_unknown_names_raise_with_close_matches():
    with pytest.raises(ValueError, match=r"unknown explainer 'gradcan' \(did you mean 'gradcam'"):
        create_explainer("gradcan", small_cnn(3))
    with pytest.raises(ValueError, match="already registered"):
        register_explainer("gradcam")(type("Other", (), {}))


def test_hooks_removed_after_many_calls_and_after_errors():
    model, x = small_cnn(4), inputs(2, 4)
    cams = [cls(model, ["blocks.0", "blocks.2"]) for cls in (GradCAM, GradCAMPlusPlus, LayerCAM)]
    for _ in range(50):
        for cam in cams:
            cam.attribute(x)
    assert no_hooks(model)
    with pytest.raises(ValueError, match="out of range"):
        cams[0].attribute(x, target=7)  # raised after the hooked forward
    assert no_hooks(model)
    with pytest.raises(TypeError):
        cams[1].attribute(x, forward_kwargs={"bogus": 1})  # raised inside the forward
    assert no_hooks(model)


@pytest.mark.parametrize(
    "target,match",
    [
        (torch.tensor([[0], [1]]), r"target must be an int or a \(2,\) tensor"),
        (torch.tensor([0, 1, 2]), r"target must be an int or a \(2,\) tensor"),
        (torch.tensor([0.0, 1.0]), "output indices"),
        (3, "target index 3 out of range for a model with 3 outputs"),
        (-1, "out of range"),
    ],
)
def test_bad_targets(target, match):
    model, x = small_cnn(3), inputs(2, 3)
    for explainer in (GradCAM(model), Saliency(model)):
        with pytest.raises(ValueError, match=match):
            explainer.attribute(x, target)


def test_bad_layers_inputs_and_options():
    model, x = small_cnn(3), inputs(2, 3)
    with pytest.raises(ValueError, match=r"unknown layer 'blocks\.9' \(did you mean 'blocks\.2'"):
        GradCAM(model, "blocks.9")
    with pytest.raises(ValueError, match="not a submodule"):
        GradCAM(model, nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="CAMs need a"):
        GradCAM(model, "head").attribute(x)
    with pytest.raises(ValueError, match="pass layer=None"):
        Saliency(model, "blocks.1")
    with pytest.raises(ValueError, match=r"no option 'normalise' \(did you mean 'normalize'"):
        GradCAM(model).attribute(x, normalise=True)
    with pytest.raises(ValueError, match="fuse must be"):
        GradCAM(model, fuse="sum").attribute(x)
    with pytest.raises(ValueError, match="model takes 3 channels"):
        GradCAM(model).attribute(inputs(2, 4))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        GradCAM(model).attribute(x[0])
    with pytest.raises(RuntimeError, match="inference_mode"), torch.inference_mode():
        GradCAM(model).attribute(x)


def test_layer_running_twice_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(self.conv(self.conv(x[:, :1]).sum(1, keepdim=True)).mean((2, 3)))

    with pytest.raises(ValueError, match="ran 2 times"):
        GradCAM(Twice(), "conv").attribute(inputs(1, 1, size=8))


def test_regression_default_target_is_output_zero_and_score_is_the_prediction():
    model, x = small_cnn(3, task="regression", num_outputs=2), inputs(2, 3)
    torch.testing.assert_close(GradCAM(model).attribute(x), GradCAM(model).attribute(x, 0))
    # Saliency without abs is d prediction_t / dx: compare with autograd on the prediction
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xr)[:, 1].sum(), xr)
    torch.testing.assert_close(Saliency(model, abs=False).attribute(x, 1), grad)


def test_normalize_gives_unit_range_and_cams_are_relu():
    model, x = small_cnn(3), inputs(3, 3)
    raw = LayerCAM(model, "blocks.1").attribute(x)
    norm = LayerCAM(model, "blocks.1").attribute(x, normalize=True)
    assert raw.min() >= 0
    assert raw.amax((1, 2, 3)).max() > 0
    torch.testing.assert_close(norm.amax((1, 2, 3)), torch.ones(3))
    torch.testing.assert_close(norm.amin((1, 2, 3)), torch.zeros(3))


def test_bf16_autocast_cpu_matches_float32():
    """Hooked bf16 tensors are promoted to float32; maps stay close to the float32 ones."""
    model, x = small_cnn(3), inputs(2, 3)
    ref = GradCAMPlusPlus(model, "blocks.1").attribute(x, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = GradCAMPlusPlus(model, "blocks.1").attribute(x, 1)
    assert out.dtype == torch.float32
    assert out.isfinite().all()
    cos = torch.nn.functional.cosine_similarity(out.flatten(1), ref.flatten(1))
    assert cos.min() > 0.98


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_autocast_cuda():
    model, x = small_cnn(3).cuda(), inputs(4, 3).cuda()
    ref = LayerCAM(model, "blocks.1").attribute(x, 0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = LayerCAM(model, "blocks.1").attribute(x, 0)
    assert out.dtype == torch.float32
    assert out.isfinite().all()
    assert no_hooks(model)
    cos = torch.nn.functional.cosine_similarity(out.flatten(1), ref.flatten(1))
    assert cos.min() > 0.98


def test_families_with_folded_batches_and_masks():
    """Shared per-channel trunk (B*N, D, h, w) and ProtoPNet's forward(x, mask)."""
    x = inputs(2, 3)
    shared = create_model("channel_attention", in_chans=3, task="binary", shared_backbone=True)
    assert LayerCAM(shared.eval()).attribute(x).shape == (2, 1, 32, 32)
    proto = create_model("protopnet", in_chans=3, task="binary").eval()
    mask = torch.ones(2, 1, 32, 32)
    cam = LayerCAM(proto, forward_kwargs={"mask": mask}).attribute(x)
    assert cam.shape == (2, 1, 32, 32)
    assert cam.isfinite().all()
    assert no_hooks(proto)


def test_smoothgrad_call_size_is_larger_only_on_a_gpu():
    from cytotune.explainers.methods.smoothgrad import CALL_VALUES, CALL_VALUES_GPU, call_images

    small, large = torch.zeros(2, 1, 64, 64), torch.zeros(2, 3, 224, 224)
    assert call_images(None, small) == CALL_VALUES // 4096 == 1024  # CPU: 4M input values
    assert call_images(None, large) == 256  # never fewer than 256 images
    assert call_images(7, small) == 7
    assert CALL_VALUES_GPU // 4096 == 8192  # a GPU's calls of 64 px crops (not testable here)
