"""bqq.slt.freeze: pruned and locked weights, ERK ratios."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bqq.slt as slt
from bqq.slt.freeze import LOCKED, PRUNED, frozen_pattern, layer_ratios
from tests.slt.common import mlp


def test_freezing_counts_and_reachability():
    pattern = frozen_pattern(0, "fc", 1000, 0.35, 0.35)
    assert int((pattern == PRUNED).sum()) == 350 and int((pattern == LOCKED).sum()) == 350
    assert torch.equal(pattern, frozen_pattern(0, "fc", 1000, 0.35, 0.35))
    # The reference code's pitfalls: a pruning ratio above the target, or locking above the density.
    with pytest.raises(ValueError, match="unreachable"):
        slt.convert(mlp(), sparsity=0.3, freeze=slt.FreezeConfig(prune=0.5))
    with pytest.raises(ValueError, match="unreachable"):
        slt.convert(mlp(), sparsity=0.7, freeze=slt.FreezeConfig(lock=0.5))
    with pytest.raises(ValueError, match="exceeds 1"):
        slt.FreezeConfig(prune=0.6, lock=0.6)
    m = slt.convert(mlp(), sparsity=0.0)  # sparsity 0 keeps everything (the reference prunes all)
    assert m[0].density() == 1.0


def test_erk_ratios():
    shapes = {"a": (64, 10), "b": (64, 64), "c": (3, 64)}
    dens = slt.erk_densities(shapes, 0.3)
    total = sum(np.prod(s) for s in shapes.values())
    assert sum(dens[n] * np.prod(s) for n, s in shapes.items()) == pytest.approx(0.3 * total)
    assert all(0.0 <= d <= 1.0 for d in dens.values()) and dens["b"] < dens["a"]
    ratios = layer_ratios(slt.FreezeConfig(prune=0.4, lock=0.3, rule="erk"), shapes)
    frozen = sum((p + r) * np.prod(shapes[n]) for n, (p, r) in ratios.items())
    assert frozen == pytest.approx(0.7 * total)
    assert all(0 <= p <= 1 and 0 <= r <= 1 and p + r <= 1 + 1e-9 for p, r in ratios.values())
