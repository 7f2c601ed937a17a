"""bqq.slt.rng: the counter-based, keyed generator of the seeded weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import bqq.slt as slt
from bqq.slt.rng import layer_seed, permutation, random_normal, random_signs, splitmix64


def test_rng_is_counter_based_and_keyed():
    key = layer_seed(0, "weight", "fc1")
    assert key != layer_seed(0, "weight", "fc2") != layer_seed(1, "weight", "fc1")
    assert key != layer_seed(0, "score", "fc1")
    draws = splitmix64(key, 1000)
    np.testing.assert_array_equal(draws[:10], splitmix64(key, 10))  # prefix-stable: element i depends on i only
    assert len(np.unique(draws)) == 1000
    signs = random_signs(key, (100, 100))
    assert set(signs.unique().tolist()) == {-1.0, 1.0} and abs(float(signs.mean())) < 0.05
    normal = random_normal(key, (200, 200))
    assert abs(float(normal.mean())) < 0.02 and abs(float(normal.std()) - 1.0) < 0.02
    perm = permutation(key, 97)
    assert sorted(perm.tolist()) == list(range(97))
    with pytest.raises(ValueError, match="seed"):
        layer_seed(-1, "weight", "x")


def test_weights_depend_on_seed_and_name_not_on_module_order():
    a = slt.convert(nn.ModuleDict({"x": nn.Linear(8, 8), "y": nn.Linear(8, 8)}), seed=5)
    b = slt.convert(nn.ModuleDict({"y": nn.Linear(8, 8), "x": nn.Linear(8, 8)}), seed=5)
    c = slt.convert(nn.ModuleDict({"x": nn.Linear(8, 8), "y": nn.Linear(8, 8)}), seed=6)
    assert torch.equal(a["x"].signs, b["x"].signs) and torch.equal(a["y"].scores, b["y"].scores)
    assert not torch.equal(a["x"].signs, a["y"].signs)
    assert not torch.equal(a["x"].signs, c["x"].signs)
