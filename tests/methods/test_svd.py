"""Truncated SVD ("svd"): FP32 factors of the rank a bit budget buys."""

from __future__ import annotations

import numpy as np
import pytest

import bqq
from tests.helpers import assert_same, gaussian, mse


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


def test_svd_fractional_budget_round_trip(tmp_path):
    q = bqq.compress(gaussian((128, 128)), bits=2.5, method="svd")
    assert q.ranks == [5]  # floor(2.5 · 2)
    bqq.save(q, tmp_path / "q.safetensors")
    loaded = bqq.load(tmp_path / "q.safetensors")
    assert loaded.bits == 2.5
    assert_same(q, loaded)


def test_svd_ranks_must_match_budget():
    q = bqq.compress(gaussian((64, 64)), bits=2, method="svd")
    info = q.info()
    assert q.field_specs(info, q.grid)["u.0.0"] == ("float32", (64, 2))
    with pytest.raises(ValueError, match="disagree"):
        q.field_specs({**info, "ranks": [[1]]}, q.grid)
