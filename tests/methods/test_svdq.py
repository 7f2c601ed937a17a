"""SVD with quantized factors ("svdq"): the rank a budget buys, 8- and 4-bit factors, the better right factor."""

from __future__ import annotations

import math

import numpy as np
import pytest

import bqq
from bqq.methods.svdq import rank_for_budget
from tests.helpers import gaussian, mse


def test_svdq_rank_formula():
    assert rank_for_budget(2, (128, 128), 8) == math.floor((2 * 128 * 128 - 128) / (8 * 256))
    assert rank_for_budget(4, (64, 48), 4) == math.floor((4 * 64 * 48 - 128) / (4 * 112))
    assert rank_for_budget(1000, (10, 6), 4) == 6  # capped at min(m, n)
    with pytest.raises(ValueError, match="rank 0"):
        bqq.compress(gaussian((16, 16)), bits=0.5, method="svdq")


def test_svdq_8_bit_factors_are_close_to_the_truncated_svd(low_rank_noise):
    """On a skewed spectrum 8-bit factors lose little against FP32 factors of the same rank."""
    w = low_rank_noise
    q = bqq.compress(w, bits=2, method="svdq")
    s = np.linalg.svd(w, compute_uv=False)
    tail = (s[q.ranks[0]:] ** 2).sum() / w.size
    assert tail <= mse(q, w) < 1.05 * tail


@pytest.mark.parametrize(("shape", "outlier"), [((96, 96), False), ((128, 512), True)])
def test_svdq_is_no_worse_than_plain_rounding(shape, outlier):
    """SVDQ keeps the better right factor: refitted (wins on a Gaussian) or the SVD's own (wins with an outlier)."""
    from bqq.methods.codes import dequantize_codes, uniform_codes
    from bqq.methods.svd import truncated_svd

    w = gaussian(shape, seed=9)
    if outlier:  # one weight of 150 standard deviations, like MiniLM's FFN output matrix
        rng = np.random.default_rng(1)
        w[rng.integers(shape[0]), rng.integers(shape[1])] = 150.0
    q = bqq.compress(w, bits=2, method="svdq", factor_bits=4)
    r = q.ranks[0]
    us, vt = truncated_svd(w, r)
    root = np.sqrt(np.linalg.norm(us, axis=0))
    lq = dequantize_codes(*uniform_codes(us / root, 4, 100))
    plain = ((lq @ dequantize_codes(*uniform_codes(vt * root[:, None], 4, 100)) - w) ** 2).mean()
    refit = np.linalg.lstsq(lq, w, rcond=None)[0]
    refitted = ((lq @ dequantize_codes(*uniform_codes(refit, 4, 100)) - w) ** 2).mean()
    assert mse(q, w) == pytest.approx(min(plain, refitted), rel=1e-6)
    assert (refitted < plain) != outlier  # each candidate wins one of the two cases


def test_svdq_bad_settings_are_rejected():
    w = gaussian((16, 16))
    with pytest.raises(ValueError, match="factor_bits"):
        bqq.compress(w, bits=2, method="svdq", factor_bits=9)
    with pytest.raises(ValueError, match="grid_points"):
        bqq.compress(w, bits=2, method="svdq", grid_points=1)
