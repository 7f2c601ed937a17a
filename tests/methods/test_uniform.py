"""Uniform quantization ("uq"): the clip-range grid search, constant groups, settings (BCQ: test_bcq.py;
SVD: test_svd.py; what every method keeps: test_contract.py)."""

from __future__ import annotations

import numpy as np
import pytest

import bqq
from bqq.methods.uniform import search_clip_range
from tests.helpers import assert_same, gaussian, mse


def test_uq_8_bits_is_accurate():
    w = gaussian((64, 64))
    q = bqq.compress(w, bits=8, method="uq")
    step = float(q.scale[0])
    assert mse(q, w) < 2e-4
    # Inside the clip range every weight is within half a step of its level.
    inside = (w >= float(q.zero[0])) & (w <= float(q.zero[0]) + 255 * step)
    assert np.abs(q.dequantize().numpy() - w)[inside].max() <= step / 2 * (1 + 1e-6)


def _uniform_error(w: np.ndarray, lo: float, hi: float, bits: int) -> float:
    scale = (hi - lo) / (2**bits - 1)
    if scale == 0:
        return float(((w - lo) ** 2).mean())
    k = np.clip(np.round((w - lo) / scale), 0, 2**bits - 1)
    return float(((lo + k * scale - w) ** 2).mean())


def test_uq_grid_search_beats_min_max():
    w = gaussian((128, 128), seed=3)
    minmax = _uniform_error(w, w.min(), w.max(), 2)
    searched = mse(bqq.compress(w, bits=2, method="uq"), w)
    assert searched < 0.6 * minmax, (searched, minmax)


def test_uq_search_matches_brute_force():
    """The prefix-sum evaluation finds the same optimum as quantizing with every candidate."""
    x = np.random.default_rng(5).standard_normal(300) ** 3 + 4  # heavy-tailed, far from zero mean
    points, bits = 12, 2
    best = min(_uniform_error(x, lo, hi, bits)
               for lo in np.linspace(x.min(), x.mean(), points) for hi in np.linspace(x.mean(), x.max(), points))
    lo, hi = search_clip_range(x, bits, points)
    assert _uniform_error(x, lo, hi, bits) == pytest.approx(best, rel=1e-12)
    assert best < _uniform_error(x, x.min(), x.max(), bits)  # the search has something to find


def test_uq_constant_matrix_is_exact():
    w = np.full((20, 30), -0.375)
    w[:10] = 2.5  # two constant groups with different values
    q = bqq.compress(w, bits=2, method="uq", group_size=(10, 30))
    assert np.array_equal(q.dequantize().numpy(), w)
    assert (q.scale == 0).all()


def test_uq_constant_float64_group(tmp_path):
    """np.full((10, 10), 0.1).mean() is 0.1 - 2.8e-17: the clip range must still not turn over."""
    w = np.full((10, 10), 0.1)
    q = bqq.compress(w, bits=3, method="uq")
    assert q.scale[0] == 0
    assert np.array_equal(q.dequantize().numpy(), np.full((10, 10), float(np.float32(0.1))))
    bqq.save(q, tmp_path / "q.safetensors")
    assert_same(q, bqq.load(tmp_path / "q.safetensors"))


def test_uq_rejects_bad_settings():
    with pytest.raises(ValueError, match="grid_points"):
        bqq.compress(gaussian((8, 8)), bits=2, method="uq", grid_points=1)
    with pytest.raises(ValueError, match="integer bits"):
        bqq.compress(gaussian((8, 8)), bits=2.5, method="uq")
