"""First-order baselines: UQ ("uq"), BCQ ("bcq") and truncated SVD ("svd")."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

import bqq
from bqq.format import unpack_bits
from bqq.methods.uniform import search_clip_range

PACKED_FIELD = {"uq": "codes.1.0", "bcq": "signs.1.0", "svd": "u.1.0"}  # a field of an uneven group


def gaussian(shape: tuple[int, int], seed: int = 1) -> np.ndarray:
    w = np.random.default_rng(seed).standard_normal(shape)
    return (w - w.mean()) / w.std()


def mse(q: bqq.QuantizedMatrix, w: np.ndarray) -> float:
    return float(((q.dequantize().double().numpy() - w) ** 2).mean())


# --- shapes, dtypes, bit accounting --------------------------------------------------------------


# --- UQ --------------------------------------------------------------------------------------------

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
    _assert_same(q, bqq.load(tmp_path / "q.safetensors"))


def test_uq_rejects_bad_settings():
    with pytest.raises(ValueError, match="grid_points"):
        bqq.compress(gaussian((8, 8)), bits=2, method="uq", grid_points=1)
    with pytest.raises(ValueError, match="integer bits"):
        bqq.compress(gaussian((8, 8)), bits=2.5, method="uq")


# --- BCQ -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 3, 4])
def test_bcq_refinement_beats_greedy(bits):
    w = gaussian((96, 96), seed=2)
    greedy = mse(bqq.compress(w, bits=bits, method="bcq", rounds=0), w)
    refined = mse(bqq.compress(w, bits=bits, method="bcq"), w)
    assert refined < 0.97 * greedy, (refined, greedy)


@pytest.mark.parametrize("rounds", [1, 2, 15])
def test_bcq_alpha_is_least_squares_for_stored_signs(rounds):
    w = gaussian((40, 36), seed=6)
    q = bqq.compress(w, bits=3, method="bcq", rounds=rounds)
    signs = 2.0 * unpack_bits(q.signs[0], 36).reshape(3, -1) - 1.0
    best = np.linalg.lstsq(signs.T, w.ravel(), rcond=None)[0]
    np.testing.assert_allclose(q.alpha[0], best, rtol=1e-6)


@pytest.mark.parametrize("rounds", [0, 15])
def test_bcq_one_bit_is_mean_abs_times_sign(rounds):
    """At 1 bit the greedy start is already optimal: α = mean|w|, B = sign(w)."""
    w = gaussian((32, 48))
    w[0, :5] = 0.0  # sign(0) = +1, in the greedy start and in the refinement alike
    q = bqq.compress(w, bits=1, method="bcq", rounds=rounds)
    expected = np.abs(w).mean() * np.where(w >= 0, 1.0, -1.0)
    np.testing.assert_allclose(q.dequantize().numpy(), expected, rtol=1e-6)


# --- SVD -------------------------------------------------------------------------------------------

def test_svd_low_rank_matrix_is_reconstructed():
    """A rank-3 matrix at a budget of rank >= 3: only the FP32 rounding of the factors remains."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((64, 3)) @ rng.standard_normal((3, 48))
    q = bqq.compress(w, bits=4, method="svd")  # rank floor(4·64·48 / (32·112)) = 3
    assert q.ranks == [3]
    rel = np.linalg.norm(q.dequantize().numpy() - w) / np.linalg.norm(w)
    assert rel < 1e-6


def test_svd_error_is_the_spectral_tail():
    """Eckart-Young: the squared error of rank r is the sum of the discarded squared singular values."""
    w = gaussian((48, 40))
    q = bqq.compress(w, bits=8, method="svd")  # rank floor(8·48·40 / (32·88)) = 5
    s = np.linalg.svd(w, compute_uv=False)
    assert q.ranks == [5]
    assert mse(q, w) * w.size == pytest.approx((s[5:] ** 2).sum(), rel=1e-5)


def test_svd_rank_zero_budget_raises():
    with pytest.raises(ValueError, match=r"rank 0 for a 64x64 group.*bits >= 1\b"):
        bqq.compress(gaussian((64, 128)), bits=0.9, method="svd", group_size=64)
    q = bqq.compress(gaussian((64, 128)), bits=1, method="svd", group_size=64)  # exactly rank 1
    assert q.ranks == [1, 1]


def test_svd_sign_convention():
    q = bqq.compress(gaussian((40, 30)), bits=8, method="svd")
    u = q.u[0]
    assert (u[np.abs(u).argmax(axis=0), np.arange(u.shape[1])] > 0).all()


# --- files and determinism -------------------------------------------------------------------------

def _assert_same(q1: bqq.QuantizedMatrix, q2: bqq.QuantizedMatrix) -> None:
    f1, f2 = q1.fields(), q2.fields()
    assert f1.keys() == f2.keys()
    for name in f1:
        assert f1[name].dtype == f2[name].dtype, name
        assert torch.equal(torch.from_numpy(np.ascontiguousarray(f1[name])),
                           torch.from_numpy(np.ascontiguousarray(f2[name]))), name
    assert torch.equal(q1.dequantize(), q2.dequantize())


def test_svd_fractional_budget_round_trip(tmp_path):
    q = bqq.compress(gaussian((128, 128)), bits=2.5, method="svd")
    assert q.ranks == [5]  # floor(2.5 · 2)
    bqq.save(q, tmp_path / "q.safetensors")
    loaded = bqq.load(tmp_path / "q.safetensors")
    assert loaded.bits == 2.5
    _assert_same(q, loaded)


# --- content validation behind the checksum --------------------------------------------------------

def _rebuild(q: bqq.QuantizedMatrix, **changes: np.ndarray) -> bqq.QuantizedMatrix:
    fields = {**{k: v.copy() for k, v in q.fields().items()}, **changes}
    info = json.loads(json.dumps(q.info()))  # as it comes back from a file
    return type(q).from_fields(info, q.grid, fields)


@pytest.mark.parametrize("method", ["uq", "bcq"])
def test_nonzero_pad_bits_are_rejected(method):
    q = bqq.compress(gaussian((130, 100)), bits=2, method=method, group_size=(64, 48))
    name = PACKED_FIELD[method]
    packed = q.fields()[name].copy()  # the group is 34 columns wide: 6 pad bits per row
    _rebuild(q, **{name: packed})     # untouched fields are accepted
    packed[0, 0, -1] |= 0x80
    with pytest.raises(ValueError, match="pad bits"):
        _rebuild(q, **{name: packed})


@pytest.mark.parametrize(("method", "name", "value", "message"),
                         [("uq", "scale", np.nan, "NaN"), ("uq", "zero", np.inf, "NaN or Inf"),
                          ("uq", "scale", -0.5, ">= 0"), ("bcq", "alpha", np.nan, "NaN"),
                          ("svd", "v.0.0", np.nan, "NaN"), ("svd", "u.0.0", -np.inf, "NaN or Inf")])
def test_bad_scalars_are_rejected(method, name, value, message):
    q = bqq.compress(gaussian((40, 40)), bits=2, method=method)
    bad = q.fields()[name].copy()
    bad.flat[0] = value
    with pytest.raises(ValueError, match=message):
        _rebuild(q, **{name: bad})


def test_svd_ranks_must_match_budget():
    q = bqq.compress(gaussian((64, 64)), bits=2, method="svd")
    info = q.info()
    assert q.field_specs(info, q.grid)["u.0.0"] == ("float32", (64, 2))
    with pytest.raises(ValueError, match="disagree"):
        q.field_specs({**info, "ranks": [[1]]}, q.grid)
