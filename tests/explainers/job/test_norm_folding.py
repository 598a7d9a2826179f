"""Batch norms folded into convolutions for the map workers: same function, fewer layers."""

import copy

import pytest
import timm
import torch
from cytotune.explainers.job.norm_folding import conv_norm_pairs, fold_norms
from cytotune.explainers.methods import create_explainer
from torch import nn


class Net(nn.Module):
    """conv -> bn -> relu twice, a head; ``reuse`` also adds the first conv's raw output to
    the second block's (a functional reader the hooks cannot see)."""

    def __init__(self, reuse: bool = False, norm=nn.BatchNorm2d):
        super().__init__()
        self.reuse = reuse
        self.conv1, self.bn1 = nn.Conv2d(2, 8, 3, padding=1), norm(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), norm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        raw = self.conv1(x)
        h = torch.relu(self.bn1(raw))
        h = torch.relu(self.bn2(self.conv2(h)) + (raw if self.reuse else 0))
        return self.head(h.mean((2, 3)))


def trained_like(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, then eval mode."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))
    return model.eval()


def test_folded_model_computes_the_same_outputs_and_maps_without_norms():
    model = trained_like(Net())
    folded = copy.deepcopy(model)
    count = fold_norms(folded, (2, 16, 16))
    assert count == 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(5, 2, 16, 16)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    for method in ("saliency", "integrated_gradients"):
        expected = create_explainer(method, model).attribute(
            x, target=torch.tensor([0, 1, 2, 0, 1])
        )
        got = create_explainer(method, folded).attribute(x, target=torch.tensor([0, 1, 2, 0, 1]))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_a_convolution_read_elsewhere_is_not_folded():
    model = trained_like(Net(reuse=True))
    # the hooks see only the norm reading conv1: the pair is proposed ...
    probe = torch.randn(2, 2, 16, 16)
    pairs, output = conv_norm_pairs(model, probe, {})
    assert ("conv1", "bn1") in pairs
    torch.testing.assert_close(output, model(probe))
    # ... but the folded outputs differ (the skip read the raw conv): every module is put back
    modules = dict(model.named_modules())
    assert fold_norms(model, (2, 16, 16)) == 0
    assert dict(model.named_modules()) == modules
    torch.testing.assert_close(model(probe), output)


class ActNorm(nn.BatchNorm2d):
    """A norm that also activates (like timm's BatchNormAct2d): not a plain affine map."""

    def forward(self, x):
        return torch.relu(super().forward(x))


def test_norm_subclasses_training_mode_kept_layers_and_the_switch(monkeypatch):
    assert fold_norms(trained_like(Net(norm=ActNorm)), (2, 16, 16)) == 0
    assert fold_norms(trained_like(Net()).train(), (2, 16, 16)) == 0
    assert fold_norms(trained_like(Net()), (2, 16, 16), keep={"conv2"}) == 1
    monkeypatch.setenv("CYTOTUNE_FOLD_NORMS", "0")
    assert fold_norms(trained_like(Net()), (2, 16, 16)) == 0
    monkeypatch.setenv("CYTOTUNE_FOLD_NORMS", "yes")
    with pytest.raises(ValueError, match="CYTOTUNE_FOLD_NORMS=.*: give 1 .on. or 0"):
        fold_norms(trained_like(Net()), (2, 16, 16))


def test_timm_resnet_folds_every_norm_and_keeps_its_outputs():
    model = trained_like(
        timm.create_model("resnet10t", pretrained=False, num_classes=4, in_chans=1)
    )
    norms = sum(type(m) is nn.BatchNorm2d for m in model.modules())
    folded = copy.deepcopy(model)
    count = fold_norms(folded, (1, 32, 32))
    assert norms > 0
    assert count == norms
    x = torch.randn(3, 1, 32, 32)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


class Shared(nn.Module):
    """One convolution called twice, each call with its own norm; one norm shared by two
    convolutions: no module may be folded for two pairs."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn_a, self.bn_b = (
            nn.Conv2d(2, 2, 3, padding=1),
            nn.BatchNorm2d(2),
            nn.BatchNorm2d(2),
        )
        self.conv2, self.conv3, self.bn_shared = (
            nn.Conv2d(2, 4, 1),
            nn.Conv2d(2, 4, 1),
            nn.BatchNorm2d(4),
        )
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.bn_a(self.conv(x)))
        h = torch.relu(self.bn_b(self.conv(h)))
        a, b = self.bn_shared(self.conv2(h)), self.bn_shared(self.conv3(h))
        return self.head(torch.cat([a, b], 1).mean((2, 3)))


def test_modules_in_two_pairs_stay_and_the_model_keeps_its_outputs():
    model = trained_like(Shared())
    reference = copy.deepcopy(model)
    assert fold_norms(model, (2, 8, 8)) == 0
    assert all(
        isinstance(model.get_submodule(n), nn.BatchNorm2d) for n in ("bn_a", "bn_b", "bn_shared")
    )
    x = torch.randn(3, 2, 8, 8)
    torch.testing.assert_close(model(x), reference(x))


def test_the_map_workers_keep_the_cam_layers_unfolded():
    from cytotune.explainers.job.worker import cam_layer_names

    class WithLayers(Net):
        def feature_layers(self):
            return {"conv2": self.conv2}

    model = trained_like(WithLayers())
    names = cam_layer_names(model, {"gradcam": {}, "layercam": {"layer": ["conv1", "bn2"]}})
    assert names == {"conv2", "conv1", "bn2"}
    assert cam_layer_names(Net(), {"gradcam": {"layer": "conv1"}}) == {"conv1"}
    assert fold_norms(model, (2, 16, 16), keep=names) == 0  # both pairs touch a CAM layer
