"""bqq.slt.masks: exact top-k masks with and without ties, nested coats, effective weights, dynamic scale.
(The other bqq.slt modules: tests/slt/test_<module>.py.)"""

from __future__ import annotations

import math

import pytest
import torch

import bqq.slt as slt
from bqq.slt.masks import levels_from_keys, top_k
from tests.slt.common import mlp


@pytest.mark.parametrize("numel", [1, 7, 64, 1001])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_top_k_is_exact_with_and_without_ties(numel, sparsity):
    k = slt.kept_count(numel, sparsity)
    keys = torch.randn(numel)
    mask = top_k(keys, k)
    assert int(mask.sum()) == k
    if 0 < k < numel:
        assert keys[mask].min() >= keys[~mask].max()
    tied = torch.ones(numel)  # all equal: ties go to the lowest indices
    mask = top_k(tied, k)
    assert int(mask.sum()) == k and bool(mask[:k].all())


def test_coat_levels_are_nested_with_exact_counts():
    keys = torch.randn(1000)
    sparsities = slt.coat_sparsities(0.5, 3)
    assert sparsities == pytest.approx((0.5, 2 / 3, 5 / 6))
    keeps = [slt.kept_count(1000, s) for s in sparsities]
    levels = levels_from_keys(keys, keeps)
    assert levels.max() == 3
    for i, keep in enumerate(keeps, start=1):
        assert int((levels >= i).sum()) == keep
    order = torch.argsort(keys, descending=True)
    assert torch.all(levels[order][:-1] >= levels[order][1:])  # higher scores never get lower levels


@pytest.mark.parametrize("bad, match", [
    ({"sparsity": 1.0}, "sparsity must be in"), ({"sparsity": -0.1}, "sparsity must be in"),
    ({"sparsity": [0.5, 0.4], "method": "msup"}, "increase strictly"), ({"method": "msup", "coats": 1}, "at least 2"),
    ({"coats": 3}, "edge_popup uses one mask"), ({"method": "magic"}, "method must be"),
    ({"scope": "layer"}, "scope must be"), ({"scale": "x"}, "scale must be"),
    ({"method": "msup", "coats": 0}, "coats must be a positive"),
    ({"method": "msup", "freeze": slt.FreezeConfig(prune=0.2)}, "not with multicoated"),
])
def test_invalid_settings_name_the_problem(bad, match):
    with pytest.raises(ValueError, match=match):
        slt.convert(mlp(), **bad)


def test_effective_weights_are_signed_constants_times_levels():
    m = slt.convert(mlp(), method="msup", sparsity=0.5, coats=3, seed=1)
    layer = m[2]
    w = layer.effective_weight().detach()
    sigma = math.sqrt(2.0) / math.sqrt(24 * 0.5)  # fan_in * first-coat density
    assert layer.sigma == pytest.approx(sigma)
    assert set(torch.unique((w / sigma).round()).tolist()) <= {-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0}
    torch.testing.assert_close(w, layer.signs * sigma * layer.levels.float())
    none = slt.convert(mlp(), scale="none", seed=1)
    assert none[2].sigma == pytest.approx(math.sqrt(2.0) / math.sqrt(24))


def test_dynamic_scale_uses_actual_density():
    m = slt.convert(mlp(), sparsity=0.75, scale="dynamic", seed=0)
    layer = m[0]
    w = layer.effective_weight().detach()
    torch.testing.assert_close(w, layer.signs * layer.sigma * layer.levels.float() / math.sqrt(layer.density()))
