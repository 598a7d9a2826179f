"""Channel-pair and MHL attention: block count, pair order, weights against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from cytotune.search_spaces.models import create_model

from .conftest import tiny


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_one_block_per_channel_pair(channels):
    model = create_model("channel_attention", in_chans=channels, **tiny("channel_attention"))
    assert len(model.blocks) == channels * (channels + 1) // 2
    assert model.pairs == [(i, j) for i in range(channels) for j in range(channels) if i <= j]
    if channels == 3:
        assert len(model.blocks) == 6  # the paper's RGB network


@pytest.mark.parametrize("shared", [True, False])
def test_shared_or_separate_backbones(shared):
    model = create_model(
        "channel_attention", in_chans=3, shared_backbone=shared, **tiny("channel_attention")
    )
    assert len(model.trunks) == (1 if shared else 3)
    assert all(t.body.conv1[0].in_channels == 1 for t in model.trunks)  # isolator: one channel each


@pytest.mark.parametrize(("layout", "tokens"), [("spatial", 4), ("grid1", 1), ("grid3", 9)])
def test_attention_weights_are_distributions(layout, tokens):
    model = create_model(
        "channel_attention", in_chans=3, heads=2, token_layout=layout, **tiny("channel_attention")
    ).eval()
    with torch.no_grad():
        model(torch.randn(5, 3, 32, 32))  # stride-16 stage at 32 px: 2 x 2 spatial tokens
    weights = model.attention_weights
    assert sorted(weights) == ["0-0", "0-1", "0-2", "1-1", "1-2", "2-2"]
    for w in weights.values():
        assert w.shape == (5, 2, tokens, tokens)
        assert (w >= 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(5, 2, tokens))


def test_queries_from_i_keys_and_values_from_j():
    model = create_model(
        "channel_attention", in_chans=2, heads=2, **tiny("channel_attention")
    ).eval()
    x = torch.randn(3, 2, 32, 32)
    with torch.no_grad():
        model(x)
        tokens = model.channel_tokens(x)  # 2 x (B, T, E)
    attn = model.blocks[model.pairs.index((0, 1))].attn
    e, h = attn.embed_dim, attn.num_heads
    wq, wk, _ = attn.in_proj_weight.split(e)
    bq, bk, _ = attn.in_proj_bias.split(e)
    q = (tokens[0] @ wq.T + bq).view(3, -1, h, e // h).transpose(1, 2)  # (B, heads, T, E/h)
    k = (tokens[1] @ wk.T + bk).view(3, -1, h, e // h).transpose(1, 2)
    expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(e // h), dim=-1)
    torch.testing.assert_close(model.attention_weights["0-1"], expected)


def test_mhl_self_attention_weights():
    model = create_model("mhl_attention", in_chans=4, **tiny("mhl_attention", heads=4)).eval()
    with torch.no_grad():
        model(torch.randn(2, 4, 64, 64))  # 4 x 4 tokens
    (w,) = model.attention_weights.values()
    assert w.shape == (2, 4, 16, 16)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 16))
    assert model.trunk.body.conv1[0].in_channels == 4  # all channels through one backbone


def test_embed_dim_must_divide_by_heads():
    with pytest.raises(ValueError, match="multiple of heads"):
        create_model("mhl_attention", embed_dim=10, heads=4)
    with pytest.raises(ValueError, match="token_layout"):
        create_model("mhl_attention", token_layout="grid")
