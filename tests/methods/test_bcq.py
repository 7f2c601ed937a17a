"""Binary-coding quantization ("bcq"): greedy start, alternating refinement, least-squares alphas."""

from __future__ import annotations

import numpy as np
import pytest

import bqq
from bqq.format import unpack_bits
from tests.helpers import gaussian, mse


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
