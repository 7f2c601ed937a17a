"""bqq.slt.layers: masked layers, straight-through gradients, shared thresholds, standalone use."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bqq.slt as slt
from bqq.slt.freeze import FREE, LOCKED, PRUNED
from tests.slt.common import blobs, mlp


@pytest.mark.parametrize("method, coats", [("edge_popup", 1), ("msup", 3)])
def test_gradients_reach_scores_only_straight_through(method, coats):
    m = slt.convert(mlp(bias=True), method=method, coats=None if method == "edge_popup" else coats, seed=0)
    assert [n for n, p in m.named_parameters() if p.requires_grad] == [
        "0.scores", "0.bias", "2.scores", "2.bias", "4.scores", "4.bias"]
    assert all(not b.requires_grad for b in m.buffers())
    x = torch.randn(7, 10)
    layer = m[4]
    w_eff = layer.effective_weight()
    w_eff.retain_grad()
    out = nn.functional.linear(m[3](m[2](m[1](m[0](x)))), w_eff, layer.bias)
    out.square().sum().backward()
    expected = w_eff.grad * layer.signs * layer.sigma * coats * torch.sign(layer.scores.detach())
    torch.testing.assert_close(layer.scores.grad, expected)


def test_frozen_weights_get_no_gradient_and_never_flip():
    freeze = slt.FreezeConfig(prune=0.3, lock=0.2)
    m = slt.convert(mlp(), sparsity=0.5, freeze=freeze, seed=2)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1.0)
    x, y = blobs(64)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        frozen = [(layer.pattern != FREE).view(layer.weight_shape) for layer in (m[0], m[2], m[4])]
        for layer, is_frozen in zip((m[0], m[2], m[4]), frozen, strict=True):
            assert torch.all(layer.scores.grad[is_frozen] == 0)
        opt.step()
        for layer in (m[0], m[2], m[4]):
            flat = layer.levels.view(-1)
            assert torch.all(flat[layer.pattern == PRUNED] == 0) and torch.all(flat[layer.pattern == LOCKED] == 1)
            assert int(flat.sum()) == slt.kept_count(layer.numel, 0.5)  # the target counts frozen weights


def test_global_threshold_ranks_all_layers_together():
    m = slt.convert(mlp(), sparsity=0.6, scope="global", freeze=slt.FreezeConfig(prune=0.2, lock=0.1, rule="erk"),
                    seed=4)
    layers = [layer for _, layer in slt.masked_layers(m)]
    assert len({id(layer.group) for layer in layers}) == 1
    total = sum(layer.numel for layer in layers)
    m(torch.randn(2, 10))  # a forward pass refreshes the shared thresholds
    kept = sum(int((layer.levels > 0).sum()) for layer in layers)
    assert kept == slt.kept_count(total, 0.6)
    free_keys = torch.cat([layer.scores.detach().abs().reshape(-1)[layer.free_mask()] for layer in layers])
    free_levels = torch.cat([layer.levels.reshape(-1)[layer.free_mask()] for layer in layers])
    assert free_keys[free_levels > 0].min() >= free_keys[free_levels == 0].max()


def test_standalone_layers_and_fix_mask():
    lin = slt.MaskedLinear(12, 5, bias=True, seed=1, key="enc", sparsity=0.4)
    conv = slt.MaskedConv2d(4, 6, 3, stride=2, padding=1, groups=2, seed=1, key="conv", sparsity=[0.5, 0.75])
    assert lin(torch.randn(3, 12)).shape == (3, 5) and lin.density() == slt.kept_count(60, 0.4) / 60
    x = torch.randn(2, 4, 9, 9)
    y = conv(x)
    assert y.shape == (2, 6, 5, 5) and conv.coats == 2
    conv.fix_mask()
    assert conv.is_fixed and conv.scores is None and torch.equal(conv(x), y)
    assert "scores" not in dict(conv.named_parameters())
    m = slt.convert(mlp(), sparsity=0.5, scope="global")
    m[0].fix_mask()  # global thresholds: the whole group is fixed together
    assert all(layer.is_fixed for _, layer in slt.masked_layers(m))
