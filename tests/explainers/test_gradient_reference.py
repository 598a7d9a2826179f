"""SmoothGrad, Integrated Gradients, Occlusion, Saliency and InputXGradient against captum's
own classes called directly on the same inputs, and IG completeness."""

from __future__ import annotations

import copy

import captum.attr as ca
import pytest
import torch
from cytotune.explainers.methods import (
    GradCAM,
    InputXGradient,
    IntegratedGradients,
    Occlusion,
    Saliency,
    SmoothGrad,
    create_explainer,
)
from torch import nn

from .conftest import inputs, small_cnn

TARGET = torch.tensor([2, 0])


@pytest.fixture(scope="module")
def model():
    return small_cnn(3)


@pytest.mark.parametrize("base,ref", [(Saliency, ca.Saliency), (InputXGradient, ca.InputXGradient)])
def test_smoothgrad_equals_captum_noise_tunnel(model, base, ref):
    """Same seed, same noise layout as NoiseTunnel: equal to float rounding."""
    x = inputs(2, 3)
    ours = SmoothGrad(base(model), sigma=0.2, n=6, seed=7).attribute(x, TARGET)
    torch.manual_seed(7)
    expected = ca.NoiseTunnel(ref(model)).attribute(
        x, nt_type="smoothgrad", nt_samples=6, stdevs=0.2, target=TARGET
    )
    torch.testing.assert_close(ours, expected, atol=1e-7, rtol=1e-5)
    # chunked base calls (2 noisy copies each) draw the same noise
    chunked = SmoothGrad(base(model), sigma=0.2, n=6, seed=7, batch_size=6).attribute(x, TARGET)
    torch.testing.assert_close(chunked, expected, atol=1e-7, rtol=1e-5)


def test_smoothgrad_squared_and_seed(model):
    x = inputs(2, 3)
    sg = SmoothGrad(Saliency(model, abs=False), sigma=0.1, n=4, squared=True)
    torch.manual_seed(0)
    expected = ca.NoiseTunnel(ca.Saliency(model)).attribute(
        x, nt_type="smoothgrad_sq", nt_samples=4, stdevs=0.1, target=TARGET, abs=False
    )
    torch.testing.assert_close(sg.attribute(x, TARGET), expected, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(sg.attribute(x, TARGET), sg.attribute(x, TARGET))  # seeded
    assert not torch.equal(sg.attribute(x, TARGET), sg.attribute(x, TARGET, seed=1))


def test_smoothgrad_wraps_cams(model):
    """Over a CAM: the mean of the CAMs of the noisy copies; sigma=0 gives the plain CAM."""
    x = inputs(2, 3)
    cam = GradCAM(model, "blocks.1")
    torch.testing.assert_close(SmoothGrad(cam, sigma=0.0, n=3).attribute(x, 1), cam.attribute(x, 1))
    sg = create_explainer("smoothgrad", model, "blocks.1", base="gradcam", n=4, seed=3)
    gen = torch.Generator().manual_seed(3)
    noisy = x[:, None] + 0.15 * torch.randn((2, 4, 3, 32, 32), generator=gen)
    expected = torch.stack([cam.attribute(noisy[i], 1).mean(0) for i in range(2)])
    torch.testing.assert_close(sg.attribute(x, 1), expected, atol=1e-6, rtol=1e-5)


def test_integrated_gradients_equal_captum(model):
    x, base = inputs(2, 3), 0.1 * inputs(2, 3, seed=5)
    ours = IntegratedGradients(model, baseline=base, n_steps=16).attribute(x, TARGET)
    expected = ca.IntegratedGradients(model).attribute(x, base, target=TARGET, n_steps=16)
    torch.testing.assert_close(ours, expected, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("task,num_outputs", [("multiclass", 3), ("regression", 2)])
def test_integrated_gradients_completeness(task, num_outputs):
    """Sum of attributions = f(x) - f(baseline) for the explained score (the prediction itself
    for regression), within 2% of |f(x) - f(baseline)| + 1e-5 at 256 Gauss-Legendre steps
    (ReLU and max-pool kinks limit the quadrature; observed 0.1-1.5%)."""
    model, x = small_cnn(3, task=task, num_outputs=num_outputs, seed=2), inputs(3, 3)
    target = torch.tensor([1, 0, 1])
    attr = IntegratedGradients(model, n_steps=256).attribute(x, target)
    with torch.no_grad():
        delta = model(x) - model(torch.zeros_like(x))
    expected = delta.gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(attr.sum((1, 2, 3)), expected, rtol=2e-2, atol=1e-5)


@pytest.mark.parametrize("per_channel", [True, False])
def test_occlusion_equals_captum(model, per_channel):
    x = inputs(2, 3)
    ours = Occlusion(model, per_channel=per_channel).attribute(x, TARGET)
    chans = 1 if per_channel else 3
    expected = ca.Occlusion(model).attribute(
        x, sliding_window_shapes=(chans, 4, 4), strides=(chans, 2, 2), target=TARGET
    )
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, expected, atol=1e-7, rtol=1e-5)


def test_saliency_and_input_x_gradient_equal_captum(model):
    x = inputs(2, 3)
    torch.testing.assert_close(
        Saliency(model).attribute(x, TARGET), ca.Saliency(model).attribute(x, target=TARGET)
    )
    torch.testing.assert_close(
        InputXGradient(model).attribute(x, TARGET),
        ca.InputXGradient(model).attribute(x, target=TARGET),
    )


class Masked(nn.Module):
    """A model whose forward takes a mask keyword (like ProtoPNet's ``forward(x, mask)``)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x, mask=None):
        x = x if mask is None else x * mask
        return self.lin(x.mean((2, 3)))


def test_forward_kwargs_reach_the_model_in_every_method():
    torch.manual_seed(0)
    model, x = Masked(), inputs(2, 2, size=8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4] = 1
    extra = {"occlusion": {"window": 2, "stride": 2}}  # windows that do not straddle the edge
    for name in ("saliency", "integrated_gradients", "occlusion", "smoothgrad"):
        explainer = create_explainer(
            name, model, forward_kwargs={"mask": mask}, **extra.get(name, {})
        )
        attr = explainer.attribute(x, 0)
        assert attr[..., 4:].abs().max() == 0, name  # masked-out pixels have no effect
        assert attr[..., :4].abs().max() > 0, name


class _Masked(nn.Module):
    """A model with a per-cell forward argument (as the mask-taking families have)."""

    def __init__(self):
        super().__init__()
        self.net = small_cnn(3)

    def forward(self, x, mask):
        return self.net(x * mask)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_batched_integrated_gradients_equal_captum_with_forward_args(method):
    """The steps batched here (no captum call) give captum's numbers: quadrature, step-major
    targets and forward arguments, channels-last inputs; a set internal_batch_size goes
    through captum itself."""
    model = _Masked().eval()
    x, base = inputs(2, 3), 0.1 * inputs(2, 3, seed=5)
    mask = (inputs(2, 1, seed=3) > 0).float()
    expected = ca.IntegratedGradients(model).attribute(
        x, base, target=TARGET, n_steps=12, method=method, additional_forward_args=(mask,)
    )
    ig = IntegratedGradients(model, baseline=base, n_steps=12, method=method)
    fk = {"forward_kwargs": {"mask": mask}}
    torch.testing.assert_close(ig.attribute(x, TARGET, **fk), expected, atol=1e-7, rtol=1e-5)
    # channels-last crops stay channels-last through the steps (other conv kernels: rounding)
    last = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ig.attribute(last, TARGET, **fk), expected, atol=2e-6, rtol=1e-4)
    chunked = IntegratedGradients(
        model, baseline=base, n_steps=12, method=method, internal_batch_size=6
    ).attribute(x, TARGET, **fk)
    torch.testing.assert_close(chunked, expected, atol=1e-6, rtol=1e-5)


def test_batched_integrated_gradients_split_their_steps_into_calls_of_the_budget(monkeypatch):
    """Steps beyond SmoothGrad's images-per-call budget go in calls of equal size (a budget
    of 8 images: 12 steps x 2 cells in 3 calls of 4 steps), with captum's numbers and the
    forward arguments repeated per call."""
    import cytotune.explainers.methods.gradient as gradient

    monkeypatch.setattr(gradient, "call_images", lambda batch_size, x: 8)
    model = _Masked().eval()
    x, base = inputs(2, 3), 0.1 * inputs(2, 3, seed=5)
    mask = (inputs(2, 1, seed=3) > 0).float()
    expected = ca.IntegratedGradients(model).attribute(
        x, base, target=TARGET, n_steps=12, additional_forward_args=(mask,)
    )
    batches = []
    handle = model.register_forward_hook(lambda m, a, out: batches.append(a[0].shape[0]))
    try:
        got = IntegratedGradients(model, baseline=base, n_steps=12).attribute(
            x, TARGET, forward_kwargs={"mask": mask}
        )
    finally:
        handle.remove()
    assert batches == [2, 8, 8, 8]  # the target's prediction, then 3 calls of 4 steps
    torch.testing.assert_close(got, expected, atol=1e-7, rtol=1e-5)


def test_cams_in_a_shared_block_take_one_pass_and_give_the_same_maps(model):
    """LayerCAM on two layers, then Grad-CAM and Grad-CAM++ on the deeper one: one forward in
    a shared block, the maps of three separate passes; another target or input is computed
    anew, and nothing is shared outside the block."""
    from cytotune.explainers.methods import GradCAMPlusPlus, LayerCAM
    from cytotune.explainers.methods.cam import shared_hooked_gradients

    x = inputs(2, 3)
    forwards = []
    handle = model.register_forward_hook(lambda *a: forwards.append(1))
    try:
        explainers = [
            LayerCAM(model, ["blocks.0", "blocks.1"]),
            GradCAM(model, "blocks.1"),
            GradCAMPlusPlus(model, "blocks.1"),
        ]
        alone = [e.attribute(x, TARGET) for e in explainers]
        assert len(forwards) == 3
        forwards.clear()
        with shared_hooked_gradients():
            shared = [e.attribute(x, TARGET) for e in explainers]
            assert len(forwards) == 1
            explainers[1].attribute(x, torch.tensor([1, 1]))  # another target: a new pass
            explainers[1].attribute(x.clone(), TARGET)  # another input: a new pass
            assert len(forwards) == 3
            for seed in (2, 3):  # a freed input's address reused by the next: still new
                explainers[1].attribute(inputs(2, 3, seed=seed), TARGET)
            assert len(forwards) == 5
        explainers[1].attribute(x, TARGET)
        assert len(forwards) == 6  # outside the block: no sharing
    finally:
        handle.remove()
    for got, expected in zip(shared, alone):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_shared_cams_never_mistake_one_input_or_setting_for_another(model):
    """Views starting at the same address, an input changed in place, forward arguments
    rebuilt per call (a freed one's id reused) and another autocast state each get their own
    pass; the targets of several outputs each keep theirs."""
    from cytotune.explainers.methods.cam import shared_hooked_gradients

    class Gained(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.blocks = model, model.blocks

        def forward(self, x, gain):
            return self.net(x * gain)

    cam = GradCAM(model, "blocks.1")
    x = inputs(4, 3)
    with shared_hooked_gradients():
        for view in (x[:2], x[::2], x[:2].transpose(2, 3)):
            torch.testing.assert_close(
                cam.attribute(view, 1), GradCAM(model, "blocks.1").attribute(view.clone(), 1)
            )
        y = inputs(2, 3, seed=4)
        cam.attribute(y, 1)
        y.mul_(-1)
        torch.testing.assert_close(
            cam.attribute(y, 1), GradCAM(model, "blocks.1").attribute(y.clone(), 1)
        )
        gained = GradCAM(Gained(), "blocks.1")
        for gain in (1.0, -3.0, 2.0):
            fk = {"forward_kwargs": {"gain": torch.tensor(gain) * 1.0}}  # a new object each call
            expected = GradCAM(model, "blocks.1").attribute(y.clone() * gain, 1)
            torch.testing.assert_close(gained.attribute(y, 1, **fk), expected)
        plain = cam.attribute(y, 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = cam.attribute(y, 1)
        assert not torch.equal(plain, low)  # bf16 got its own pass
    forwards = []
    handle = model.register_forward_hook(lambda *a: forwards.append(1))
    try:
        with shared_hooked_gradients():
            for method in (GradCAM, GradCAM, GradCAM):  # the worker: methods outside targets
                for target in (0, 1, 2):
                    method(model, "blocks.1").attribute(x, target)
        assert len(forwards) == 3  # one pass per target
    finally:
        handle.remove()


def test_batched_integrated_gradients_keep_half_precision_inputs(model):
    half = copy.deepcopy(model).to(torch.bfloat16)
    x = inputs(2, 3).to(torch.bfloat16)
    ours = IntegratedGradients(half, n_steps=8).attribute(x, TARGET)
    expected = ca.IntegratedGradients(half).attribute(x, target=TARGET, n_steps=8)
    assert ours.dtype == expected.dtype
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "method,steps",
    [
        ("gausslegendre", (1, 2, 7, 50)),
        *[
            (m, (2, 7, 50))
            for m in ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
        ],
    ],
)
def test_quadrature_nodes_equal_captums(method, steps):
    """The step sizes and alphas computed here are captum's, number for number."""
    from captum.attr._utils.approximation_methods import approximation_parameters
    from cytotune.explainers.methods.gradient import _nodes

    step_sizes, alphas = approximation_parameters(method)
    for n in steps:
        ours_steps, ours_alphas = _nodes(method, n)
        assert list(ours_steps) == list(step_sizes(n)), (method, n)
        assert list(ours_alphas) == list(alphas(n)), (method, n)


def test_quadrature_nodes_reject_bad_methods_and_step_counts():
    from cytotune.explainers.methods.gradient import _nodes

    with pytest.raises(ValueError, match="unknown integration method 'simpson'"):
        _nodes("simpson", 10)
    with pytest.raises(ValueError, match="riemann_left needs n_steps >= 2"):
        _nodes("riemann_left", 1)


def test_saliency_with_forward_arguments_equals_captum():
    model = _Masked().eval()
    x, mask = inputs(2, 3), (inputs(2, 1, seed=3) > 0).float()
    expected = ca.Saliency(model).attribute(x, target=TARGET, additional_forward_args=(mask,))
    got = Saliency(model).attribute(x, TARGET, forward_kwargs={"mask": mask})
    torch.testing.assert_close(got, expected, atol=1e-7, rtol=1e-5)


def test_default_input_methods_do_not_import_captum():
    """Saliency, SmoothGrad of it and batched Integrated Gradients run without captum's import
    (0.7 s of the explain job's interpreter lock, matplotlib included)."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from cytotune.explainers.methods import create_explainer\n"
        "model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(),"
        " torch.nn.LazyLinear(3)).eval()\n"
        "x = torch.randn(2, 1, 8, 8)\n"
        "model(x)\n"
        "for name, kw in [('saliency', {}), ('smoothgrad', {'n': 2}),"
        " ('integrated_gradients', {'n_steps': 4})]:\n"
        "    assert create_explainer(name, model, **kw).attribute(x).shape == x.shape\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'captum'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
