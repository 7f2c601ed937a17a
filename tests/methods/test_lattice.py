"""E8 lattice VQ ("lvq"): the 240 roots, stages of one scale times a root per 8-weight chunk."""

from __future__ import annotations

import numpy as np
import pytest

import bqq
from bqq.methods.lattice import chunk_count, e8_roots
from tests.helpers import gaussian, mse


def test_e8_roots():
    roots = e8_roots()
    assert roots.shape == (240, 8)
    assert np.allclose((roots**2).sum(axis=1), 2.0)
    assert len({tuple(r) for r in roots}) == 240
    assert {tuple(-r) for r in roots} == {tuple(r) for r in roots}  # closed under negation
    gram = roots @ roots.T
    assert set(np.unique(gram)) <= {-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0} and set(np.unique(gram)) >= {-2.0, 2.0}
    assert (roots[:128] ** 2 == 0.25).all() and ((roots[:128] < 0).sum(axis=1) % 2 == 0).all()
    assert np.array_equal(roots[128], [-1, -1, 0, 0, 0, 0, 0, 0]) and np.array_equal(roots[239], [0] * 6 + [1, 1])


def test_lvq_scaled_roots_are_exact():
    """Chunks that are one scale times a root are rebuilt exactly by one stage."""
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 240, size=30)
    w = (1.75 * e8_roots()[idx]).reshape(24, 10)
    q = bqq.compress(w, bits=1, method="lvq")
    assert np.array_equal(q.roots[0][0], idx)
    np.testing.assert_allclose(q.dequantize().double().numpy(), w, atol=1e-6)


def test_lvq_padding_and_chunks():
    w = gaussian((13, 7))  # 91 weights: 12 chunks, the last padded with 5 zeros
    q = bqq.compress(w, bits=2, method="lvq", scale_bits=3)
    assert chunk_count((13, 7)) == 12
    assert q.fields()["roots.0.0"].shape == (2, 12) and q.fields()["scodes.0.0"].shape == (2, 3, 2)
    assert q.total_bits == 2 * (12 * 11 + 64)


def test_lvq_more_scale_bits_help():
    w = gaussian((64, 64), seed=3)
    errors = [mse(bqq.compress(w, bits=2, method="lvq", scale_bits=s), w) for s in (1, 2, 4)]
    assert errors[0] > errors[1] > errors[2], errors


def test_lvq_bad_settings_are_rejected():
    w = gaussian((16, 16))
    with pytest.raises(ValueError, match="scale_bits"):
        bqq.compress(w, bits=2, method="lvq", scale_bits=0)
    with pytest.raises(ValueError, match="integer bits"):
        bqq.compress(w, bits=1.5, method="lvq")
