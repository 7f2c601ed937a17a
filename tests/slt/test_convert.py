"""bqq.slt.convert: SLTConfig and converting a model's layers to masked layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bqq.slt as slt
from tests.slt.common import mlp


def test_convert_leaves_global_rng_alone_and_is_deterministic():
    torch.manual_seed(123)
    dense = mlp()
    before = torch.get_rng_state()
    m1 = slt.convert(dense, method="msup", seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    m2 = slt.convert(mlp(), method="msup", seed=3)
    x = torch.randn(5, 10)
    assert torch.equal(m1(x), m2(x))


def test_config_round_trip_and_include_exclude():
    config = slt.SLTConfig(method="msup", sparsity=[0.6, 0.8], freeze=None, seed=9, exclude=("4",))
    assert slt.SLTConfig.from_dict(config.to_dict()) == config
    assert config.coats == 2 and config.sparsities == (0.6, 0.8)
    m = slt.convert(mlp(), config)
    assert [name for name, _ in slt.masked_layers(m)] == ["0", "2"] and isinstance(m[4], nn.Linear)
    with pytest.raises(ValueError, match="no Linear/Conv2d layer matches"):
        slt.convert(mlp(), include="nothing*")


def test_shared_weight_key_shares_weights_not_scores(tmp_path):
    dense = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False))
    for layer in dense:
        layer.slt_weight_key = "shared"
    m = slt.convert(dense, seed=3)
    assert torch.equal(m[0].signs, m[1].signs) and not torch.equal(m[0].scores, m[1].scores)
    x = torch.randn(2, 8)
    slt.export(m, tmp_path / "t.safetensors")
    plain = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False))
    fresh = slt.load(tmp_path / "t.safetensors", plain)
    assert torch.equal(fresh(x), m(x)) and fresh[0].weight_key == "shared"
