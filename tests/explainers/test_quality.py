"""Explanation quality scores on hand-computed examples and toy models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cytotune.explainers.quality import (
    deletion_insertion,
    make_baseline,
    mass_inside,
    pointing_game,
    prototype_diversity,
    randomisation_check,
    randomizable_layers,
    randomize_weights,
    ssim,
)
from torch import nn


def region_score(region):
    """A toy model: the score is the sum of all channels' pixels inside a fixed region."""
    region = torch.as_tensor(region, dtype=torch.float32)
    return lambda x: (x * region).sum(dim=(1, 2, 3))


# --- deletion / insertion -------------------------------------------------------------------


def test_deletion_insertion_hand_computed_2x2():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    model_fn = region_score([[1, 1], [0, 0]])  # top row: score 3
    maps = torch.tensor([[[2.0, 1.0], [0.0, 0.0]]])  # ranks (0,0), (0,1), then ties row-major
    out = deletion_insertion(model_fn, x, maps, steps=4, batch_size=3)
    curves = out["curves"]
    np.testing.assert_allclose(curves["fraction"], [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(curves["deletion"][0], [3, 2, 0, 0, 0])
    np.testing.assert_allclose(curves["insertion"][0], [0, 1, 3, 3, 3])
    # trapezoids of width 1/4: (2.5 + 1) / 4 and (0.5 + 2 + 3 + 3) / 4
    np.testing.assert_allclose(out["deletion_auc"], [0.875])
    np.testing.assert_allclose(out["insertion_auc"], [2.125])
    norm = deletion_insertion(model_fn, x, maps, steps=4, normalize=True)
    np.testing.assert_allclose(norm["deletion_auc"], [0.875 / 3])
    np.testing.assert_allclose(norm["insertion_auc"], [2.125 / 3])


def test_deletion_insertion_toy_model_batched():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 8, 8, generator=gen) + 0.1
    region = torch.zeros(8, 8)
    region[2:5, 3:7] = 1
    good = region.expand(5, 1, 8, 8) + 0.01 * torch.rand(5, 1, 8, 8, generator=gen)
    bad = 1 - good
    model_fn = region_score(region)
    a = deletion_insertion(model_fn, x, good, steps=16)
    assert (a["deletion_auc"] < a["insertion_auc"]).all()
    b = deletion_insertion(model_fn, x, bad, steps=16)
    assert (a["deletion_auc"] < b["deletion_auc"]).all()
    assert (a["insertion_auc"] > b["insertion_auc"]).all()
    # chunking does not change results; (B, C, H, W) maps are summed over channels
    c = deletion_insertion(model_fn, x, good.expand(5, 3, 8, 8) / 3, steps=16, batch_size=7)
    np.testing.assert_allclose(c["deletion_auc"], a["deletion_auc"], rtol=1e-6)
    np.testing.assert_allclose(c["insertion_auc"], a["insertion_auc"], rtol=1e-6)
    # per-image target on a (N, K) output picks the column
    two = lambda z: torch.stack([model_fn(z), -model_fn(z)], dim=1)  # noqa: E731
    d = deletion_insertion(two, x, good, steps=16, target=[0, 0, 1, 0, 1])
    sign = np.array([1, 1, -1, 1, -1])
    np.testing.assert_allclose(d["deletion_auc"], sign * a["deletion_auc"], rtol=1e-6)


def test_baselines_and_errors():
    x = torch.full((2, 2, 5, 5), 0.7)
    np.testing.assert_allclose(make_baseline(x, "blur").numpy(), 0.7, rtol=1e-6)
    assert make_baseline(x, 0.3).sub(0.3).abs().max() < 1e-7
    assert make_baseline(x, "mean").shape == x.shape
    assert make_baseline(x, torch.zeros(2, 1, 1)).shape == x.shape
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline(x, "noise")
    model_fn = region_score(torch.ones(5, 5))
    with pytest.raises(ValueError, match="maps have shape"):
        deletion_insertion(model_fn, x, torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="steps"):
        deletion_insertion(model_fn, x, torch.ones(2, 5, 5), steps=0)
    with pytest.raises(ValueError, match="one score per image"):
        deletion_insertion(lambda z: z.sum(dim=(2, 3)), x, torch.ones(2, 5, 5))


# --- localisation ---------------------------------------------------------------------------


def test_mass_inside_hand_example():
    maps = np.array([[[1.0, 2.0], [3.0, -4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    mask = np.array([[1, 0], [0, 1]])
    share = mass_inside(maps, mask)
    assert share[0] == pytest.approx(1 / 6)  # negative -4 clipped, inside mass 1 of 6
    assert np.isnan(share[1])
    per_channel = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[-5.0, 1.0], [0.0, 0.0]]]])
    assert mass_inside(per_channel, torch.tensor([[[1, 0], [0, 0]]]))[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="mask has shape"):
        mass_inside(maps, np.ones((3, 3)))


def test_pointing_game_hand_example():
    maps = np.zeros((4, 1, 5, 5))
    maps[0, 0, 1, 2] = 1  # peak inside
    maps[1, 0, 4, 4] = 1  # peak outside, one pixel away from the mask
    maps[2, 0, 0, 0] = maps[2, 0, 2, 2] = 1  # tie: first in row-major order, (0, 0), is outside
    maps[3, 0, 3, 3] = 1  # diagonal neighbour of the mask: distance sqrt(2)
    mask = np.zeros((5, 5), dtype=bool)
    mask[1:3, 1:3] = True
    mask[1, 2] = True
    masks = np.stack([mask, mask, mask, mask])
    masks[1, 3, 4] = True  # directly above (4, 4)
    np.testing.assert_array_equal(pointing_game(maps, masks), [True, False, False, False])
    np.testing.assert_array_equal(pointing_game(maps, masks, 1), [True, True, False, False])
    np.testing.assert_array_equal(pointing_game(maps, masks, 1.5), [True, True, True, True])
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(maps, mask, -1)


# --- randomisation --------------------------------------------------------------------------


def test_randomisation_check_identical_and_independent():
    rng = np.random.default_rng(0)
    maps = rng.random((6, 1, 16, 16))
    same = randomisation_check(maps, maps.copy())
    np.testing.assert_allclose(same["spearman"], 1.0)
    np.testing.assert_allclose(same["ssim"], 1.0)
    np.testing.assert_allclose(same["pearson"], 1.0)
    assert not same["passed"]
    assert same["pass_rate"] == 0.0
    indep = randomisation_check(maps, rng.random((6, 1, 16, 16)))
    assert abs(indep["spearman_mean"]) < 0.1
    assert indep["ssim_mean"] < 0.2
    assert indep["passed"]
    assert indep["pass_rate"] == 1.0
    monotone = randomisation_check(maps, np.exp(5 * maps))  # same ranks, different values
    np.testing.assert_allclose(monotone["spearman"], 1.0)
    assert (monotone["pearson"] < 1.0).all()
    assert randomisation_check(maps, -maps, absolute=True)["spearman_mean"] == pytest.approx(1)


@pytest.mark.parametrize("shape", [(20, 24), (32, 32), (11, 40)])
def test_ssim_equals_scikit_image(shape):
    """An independent implementation: skimage's structural_similarity with the Gaussian window
    of Wang et al. (sigma 1.5, population covariances, K1 0.01, K2 0.03) on the same maps."""
    from scipy import ndimage
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(2)
    a = rng.random((3, *shape))
    b = np.stack([rng.random(shape), a[1] + 0.1 * rng.random(shape), 1 - a[2]])
    a[0] = ndimage.gaussian_filter(a[0], 2)  # smooth, like a CAM
    b = np.clip(b, 0, 1)
    ref = [
        structural_similarity(
            x, y, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        for x, y in zip(a, b)
    ]
    np.testing.assert_allclose(ssim(a, b), ref, rtol=1e-9, atol=1e-12)


def test_ssim_properties():
    rng = np.random.default_rng(1)
    a = rng.random((2, 4, 4))  # smaller than the window: every pixel counts
    np.testing.assert_allclose(ssim(a, a), 1.0)
    assert (ssim(a, 1 - a) < 0).all()


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.prototypes = nn.Parameter(torch.rand(3, 4))  # no reset_parameters: normal init
        self.conv1 = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        return self.fc(self.conv2(x).mean(dim=(2, 3)))


def test_randomize_weights_changes_every_parameter():
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():  # pretend training moved the norm layer off its init
        model.bn.weight.add_(0.5)
        model.bn.bias.add_(0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_state = torch.get_rng_state()
    rand = randomize_weights(model, seed=3, mode="full")
    assert torch.equal(torch.get_rng_state(), rng_state)
    for k, v in model.state_dict().items():  # original untouched
        assert torch.equal(v, before[k]), k
    for name, p in rand.named_parameters():
        assert not torch.allclose(p, before[name]), name
    again = randomize_weights(model, seed=3, mode="full")
    for (_, p), (_, q) in zip(rand.named_parameters(), again.named_parameters()):
        assert torch.equal(p, q)
    assert rand(torch.rand(2, 2, 8, 8)).shape == (2, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_randomize_weights_gives_the_same_copy_on_cpu_and_gpu():
    """One seed, one random copy on every device: the check's verdict must not depend on it."""
    torch.manual_seed(0)
    model = SmallCNN()
    on_cpu = randomize_weights(model, seed=5, mode="full")
    on_gpu = randomize_weights(model.cuda(), seed=5, mode="full")
    for (name, p), (_, q) in zip(on_cpu.state_dict().items(), on_gpu.state_dict().items()):
        assert q.device.type == "cuda", name
        assert torch.equal(p, q.cpu()), name


def test_randomize_weights_cascading_and_independent():
    model = SmallCNN()
    assert randomizable_layers(model) == ["fc", "conv2", "bn", "conv1", ""]
    top = randomize_weights(model, seed=0, layers=1)
    assert not torch.equal(top.fc.weight, model.fc.weight)
    assert torch.equal(top.conv2.weight, model.conv2.weight)
    two = randomize_weights(model, seed=0, layers="conv2")
    assert torch.equal(two.fc.weight, top.fc.weight)  # consistent cascade
    assert not torch.equal(two.conv2.weight, model.conv2.weight)
    assert torch.equal(two.conv1.weight, model.conv1.weight)
    ind = randomize_weights(model, seed=0, mode="independent", layers=["conv1"])
    assert not torch.equal(ind.conv1.weight, model.conv1.weight)
    assert torch.equal(ind.fc.weight, model.fc.weight)
    with pytest.raises(ValueError, match="layers"):
        randomize_weights(model, layers="nope")
    with pytest.raises(ValueError, match="mode"):
        randomize_weights(model, mode="bottom-up")


# --- prototypes -----------------------------------------------------------------------------


def test_prototype_diversity_flags_duplicates():
    rng = np.random.default_rng(0)
    protos = rng.random((5, 8))
    protos[3] = protos[1] + 1e-5
    out = prototype_diversity(torch.as_tensor(protos).view(5, 8, 1, 1))
    assert out["duplicate_pairs"] == [(1, 3)]
    assert out["duplicated"] == [1, 3]
    assert out["n_distinct"] == 4
    assert out["min_distance"] < 1e-3 < out["mean_distance"]
    np.testing.assert_allclose(out["distances"][1, 3], np.linalg.norm(protos[1] - protos[3]))
    clean = prototype_diversity(rng.random((4, 8)))
    assert clean["n_duplicate_pairs"] == 0
    assert clean["n_distinct"] == 4
    with pytest.raises(ValueError, match="at least 2"):
        prototype_diversity(np.ones((1, 8)))


def test_quality_contexts_random_copies_equal_randomize_weights(tmp_path):
    """A context's random copies (one working copy per model and thread, refilled per call) hold
    exactly the weights of ``randomize_weights`` for every seed and depth, in any call order,
    cached or drawn."""
    from cytotune.explainers.job.scores import FoldCache, QualityContext
    from cytotune.explainers.quality.randomisation import randomize_weights

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    ).eval()
    model[1].running_mean += 0.5  # learned statistics, which a full copy resets
    before = {name: value.clone() for name, value in model.state_dict().items()}
    context = QualityContext.__new__(QualityContext)  # only its copies: no dataset
    context.cache, context._copies_of = FoldCache(), None
    randomize = context.randomized("trial")
    asks = [
        dict(seed=1, mode="full"),
        dict(seed=0, mode="cascading", layers=1),
        dict(seed=1, mode="full"),  # cached
        dict(seed=0, mode="cascading", layers=2),
        dict(seed=2, mode="full"),
        dict(seed=0, mode="cascading", layers=1),  # cached, after others
    ]
    for ask in asks:
        got = randomize(model, **ask).state_dict()
        want = randomize_weights(model, **ask).state_dict()
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=f"{ask} {name}")
    assert context.cache.copies_made == 4  # the repeated asks came from the cache
    for name, value in model.state_dict().items():  # the trained model is untouched
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
