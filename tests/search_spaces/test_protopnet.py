"""Mask-aware ProtoPNet: distances by hand, push, stages, frozen last layer, receptive field."""

from __future__ import annotations

import math

import pytest
import torch
from cytotune.search_spaces.models import create_model
from cytotune.search_spaces.models.families.protopnet import (
    PrototypeSchedule,
    background_mask,
    masked_distances,
    similarity,
)

from ._train import fit
from .conftest import tiny


def test_masked_distance_matches_hand_computation():
    # 2 x 2 latent map with D = 2; patch vectors in row-major order:
    # (0,0) = [0, 0], (0,1) = [3, 4], (1,0) = [1, 0], (1,1) = [0, 1] (background)
    z = torch.tensor([[[[0.0, 3.0], [1.0, 0.0]], [[0.0, 4.0], [0.0, 1.0]]]])  # (1, 2, 2, 2)
    prototypes = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    background = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
    d = masked_distances(z, prototypes, background, a=10.0)
    expected = torch.tensor([[[0.0, 3.0], [5.0, 4.0], [1.0, 2.0], [11.0, 10.0 + math.sqrt(10.0)]]])
    torch.testing.assert_close(d, expected)
    sim = similarity(torch.tensor([0.0, 2.0]), eps=1e-4)
    torch.testing.assert_close(sim, torch.tensor([math.log(1 / 1e-4), math.log(5 / (4 + 1e-4))]))


def test_background_mask_downsampling():
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1  # top-left patch fully inside
    mask[0, 2, 2:] = 1  # bottom-right patch half inside
    mask[0, 0, 2] = 1  # top-right patch a quarter inside
    bg = background_mask(mask, (2, 2), threshold=0.5)
    torch.testing.assert_close(bg, torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))


def test_background_patches_never_match():
    model = create_model("protopnet", in_chans=2, **tiny("protopnet", mask_weight=100.0)).eval()
    x = torch.randn(1, 2, 32, 32)
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:24, 8:24] = 1
    with torch.no_grad():
        z = model.latent(x)  # (1, D, 4, 4) at stride 8
        model.prototypes[0] = z[0, :, 0, 0]  # a background corner patch
        _, d_free = model.forward_with_distances(x)
        _, d_masked = model.forward_with_distances(x, mask)
    assert d_free[0, 0] < 1e-5  # without a mask the corner matches exactly
    assert 1e-3 < d_masked[0, 0] < 100.0  # with it, the best match is an in-cell patch
    with torch.no_grad():
        _, d_all = model.distances(x, mask)
    assert d_all[0, 0, 0] >= 100.0  # the corner itself is pushed out by a


def _cells(n: int = 24, size: int = 32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, size, size, generator=gen)
    y = torch.arange(n) % 2
    mask = torch.zeros(n, size, size)
    for i in range(n):
        r0, c0 = torch.randint(0, size // 2, (2,), generator=gen).tolist()
        mask[i, r0 : r0 + size // 2, c0 : c0 + size // 2] = 1
    return x, y, mask


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_push_projects_onto_in_mask_patches_of_own_class(task):
    model = create_model("protopnet", in_chans=2, task=task, num_outputs=2, **tiny("protopnet"))
    x, y, mask = _cells()
    target = y if task == "binary" else torch.randn(len(y), 2)
    ids = [f"cell-{i}" for i in range(len(x))]
    sources = model.push(
        (x[i : i + 8], target[i : i + 8], mask[i : i + 8], ids[i : i + 8])
        for i in range(0, len(x), 8)
    )

    assert len(sources) == model.prototypes.shape[0] == 6
    model.eval()
    for m, src in enumerate(sources):
        assert src.prototype == m
        assert src.class_index == int(model.prototype_class[m])
        i = ids.index(src.source_id)
        if task == "binary":
            assert int(y[i]) == src.class_index  # own class only
        with torch.no_grad():
            z = model.latent(x[i : i + 1])  # (1, D, 4, 4)
            _, d = model.distances(x[i : i + 1], mask[i : i + 1])
        torch.testing.assert_close(model.prototypes[m], z[0, :, src.row, src.col])  # a real patch
        assert d[0, src.row * z.shape[-1] + src.col, m] < 1e-4  # distance ~0, not background
        y0, x0, y1, x1 = src.box
        assert (y1 - y0, x1 - x0) == (8, 8)
        assert (y0, x0) == (src.row * 8, src.col * 8)
        assert mask[i, y0:y1, x0:x1].mean() >= 0.5  # the patch lies in the cell
    assert model.prototype_sources == sources


def test_frozen_last_layer_stays_fixed():
    model = create_model("protopnet", in_chans=2, **tiny("protopnet", freeze_last_layer=True))
    expected = torch.tensor([[1.0, 1.0, 1.0, -0.5, -0.5, -0.5], [-0.5, -0.5, -0.5, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(model.last_layer.weight, expected)
    assert model.schedule.last_layer_epochs == 0
    x, y, mask = _cells(16)
    fit(model, x, y, mask, epochs=3, batch_size=8)
    assert not model.last_layer.weight.requires_grad
    torch.testing.assert_close(model.last_layer.weight, expected)


def test_stages_set_trainable_parts():
    model = create_model("protopnet", in_chans=1, **tiny("protopnet"))
    trunk = list(model.trunk.parameters())
    model.set_stage("warmup")
    assert not any(p.requires_grad for p in trunk)
    assert model.prototypes.requires_grad
    assert model.last_layer.weight.requires_grad
    model.set_stage("last_layer")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["last_layer.weight"]
    model.set_stage("joint")
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="unknown stage"):
        model.set_stage("push")


def test_schedule():
    s = PrototypeSchedule(warmup_epochs=2, push_start=4, push_every=3, last_layer_epochs=5)
    assert [s.stage(e) for e in range(4)] == ["warmup", "warmup", "joint", "joint"]
    assert [e for e in range(12) if s.push_after(e)] == [3, 6, 9]
    assert s.push_after(4, num_epochs=5)  # always push after the last epoch


def test_loss_is_ce_plus_weighted_cluster_and_separation():
    model = create_model("protopnet", in_chans=1, **tiny("protopnet", l1_weight=0.0)).eval()
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 0, 1])
    result = model.compute_loss(x, y)
    _, min_d = model.forward_with_distances(x)
    own = model.prototype_class[None] == y[:, None]
    clst = torch.stack([min_d[b][own[b]].min() for b in range(4)]).mean()
    sep = -torch.stack([min_d[b][~own[b]].min() for b in range(4)]).mean()
    ce = torch.nn.functional.cross_entropy(result.output, y)
    torch.testing.assert_close(result.loss, ce + 0.8 * clst + 0.08 * sep)


def test_receptive_field_in_pixels():
    # resnet10t: 3 stem convs (3x3, first stride 2) -> 3, 7, 11 px; max-pool 3/2 -> 15 px at
    # stride 4; layer1 two 3x3 convs -> 31; layer2 (stride 8) two 3x3 convs -> 39, 55.
    fields = {
        stage: create_model("protopnet", **tiny("protopnet", feature_stage=stage)).receptive_field()
        for stage in (1, 2)
    }
    assert fields == {1: 31, 2: 55}


def test_distance_gradients_equal_cdists_without_its_buffer():
    """The distances' backward (matrix products) gives torch.cdist's gradients, 0 at distance
    0 as cdist does; torch.cdist's CUDA backward overflowed past 2^31 buffer elements."""
    from cytotune.search_spaces.models.families.protopnet import PatchDistances

    torch.manual_seed(0)
    z = torch.randn(3, 4, 2, 2, dtype=torch.float64, requires_grad=True)  # (B, D, h, w)
    prototypes = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        prototypes[0] = z[0, :, 1, 0]  # one exact match: distance 0
    d = masked_distances(z, prototypes, None, 0.0)
    assert type(d.grad_fn).__name__ == "PatchDistancesBackward"
    patches = z.flatten(2).transpose(1, 2)
    reference = torch.cdist(patches, prototypes[None], compute_mode="donot_use_mm_for_euclid_dist")
    assert reference[0, 2, 0] == 0.0
    torch.testing.assert_close(d, reference)
    seed = torch.randn_like(d)
    ours = torch.autograd.grad(d, (z, prototypes), seed)
    theirs = torch.autograd.grad(reference, (z, prototypes), seed)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
    far = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(PatchDistances.apply, (far, prototypes))
    with torch.no_grad():  # predicting: torch.cdist itself
        assert masked_distances(z, prototypes, None, 0.0).grad_fn is None


@pytest.mark.parametrize("limit", [1, 3 * 5 * 16, 10**9])  # a patch, 3 patches, all at once
def test_chunked_distances_equal_torch_cdist_and_keep_exact_zeros(limit):
    """The GPU's distances (differences in chunks of rows, one norm each) are torch.cdist's
    direct distances to float rounding, in any chunking, and exactly 0 where a patch is a
    prototype (a pushed prototype and its own patch)."""
    from cytotune.search_spaces.models.families.protopnet import chunked_distances

    torch.manual_seed(1)
    patches = 3 * torch.randn(20, 7, 16)  # (B, P, D)
    prototypes = torch.randn(5, 16)
    patches[4, 2] = prototypes[3]
    reference = torch.cdist(patches, prototypes[None], compute_mode="donot_use_mm_for_euclid_dist")
    got = chunked_distances(patches, prototypes, limit=limit)
    assert got.shape == (20, 7, 5)
    torch.testing.assert_close(got, reference, rtol=1e-6, atol=1e-6)
    assert got[4, 2, 3] == 0.0
    half = chunked_distances(patches.to(torch.bfloat16), prototypes, limit=limit)
    assert half.dtype == torch.float32  # bf16 patches (autocast) measured in fp32
    both = chunked_distances(patches.to(torch.bfloat16), prototypes.to(torch.bfloat16))
    assert both.dtype == torch.float32  # never differences in bf16
    assert chunked_distances(patches[:0], prototypes, limit=limit).shape == (0, 7, 5)


def test_chunked_distances_hold_at_most_their_limit_of_differences(monkeypatch):
    """However many patches a crop has, at most ``limit`` differences exist at once (one
    patch's where those are more): a large latent map does not take the memory of a batch."""
    from cytotune.search_spaces.models.families import protopnet

    sizes = []
    norm = torch.linalg.vector_norm

    def counted(x, *args, **kwargs):
        sizes.append(x.numel())
        return norm(x, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "vector_norm", counted)
    patches, prototypes = torch.randn(2, 50, 16), torch.randn(5, 16)  # 80 per patch
    for limit, most in [(800, 800), (50, 80)]:
        sizes.clear()
        got = protopnet.chunked_distances(patches, prototypes, limit=limit)
        assert max(sizes) == most
        assert sum(sizes) == 2 * 50 * 80
        torch.testing.assert_close(
            got, torch.cdist(patches, prototypes[None]), rtol=1e-5, atol=1e-5
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: its distances")
def test_distances_on_the_gpu_equal_the_cpus():
    from cytotune.search_spaces.models.families.protopnet import _cdist

    torch.manual_seed(2)
    patches, prototypes = torch.randn(300, 16, 128), torch.randn(160, 128)
    patches[7, 3] = prototypes[11]
    got = _cdist(patches.cuda(), prototypes.cuda()).cpu()
    torch.testing.assert_close(got, _cdist(patches, prototypes), rtol=1e-5, atol=1e-5)
    assert got[7, 3, 11] == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: a fold model there")
def test_receptive_field_of_a_model_on_the_gpu_equals_the_cpus():
    """The probe follows the model's device (a GPU explain job's prototype stage passed a CPU
    probe to a model on the GPU and failed)."""
    on_cpu = create_model("protopnet", in_chans=2, **tiny("protopnet"))
    on_gpu = create_model("protopnet", in_chans=2, **tiny("protopnet")).cuda()
    assert on_gpu.receptive_field() == on_cpu.receptive_field() > 1
