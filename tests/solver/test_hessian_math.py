"""The in-place LAPACK helpers of the H maths equal the plain numpy formulas they replace."""
from __future__ import annotations

import numpy as np
import pytest

from bqq.ptq.quantize import CORRECTION_DAMPING, corrected_target, correction_moments, relative_error
from bqq.solver import column_blocks
from bqq.solver.hessian_math import (
    channel_scale,
    clipped_channels,
    damped,
    prepare_hessian,
    solve_positive_definite,
    upper_inverse_factor,
)
from tests.helpers import anisotropic_inputs, output_error


def _spd(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((3 * n, n))
    return x.T @ x / (3 * n) + 0.01 * np.eye(n)


@pytest.mark.parametrize("n", [1, 7, 64])
def test_upper_inverse_factor_is_gptq_cholesky_of_inverse(n: int) -> None:
    h = _spd(n)
    expected = np.linalg.cholesky(np.linalg.inv(h)).T
    got = upper_inverse_factor(h.copy())
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-10)
    assert np.allclose(np.tril(got, -1), 0.0)
    np.testing.assert_allclose(got.T @ got, np.linalg.inv(h), rtol=1e-8, atol=1e-10)


def test_solve_positive_definite_matches_numpy_and_solves_a_transposed_rhs() -> None:
    a = _spd(40, seed=1)
    w = np.random.default_rng(2).standard_normal((9, 40))
    expected = np.linalg.solve(a, w.T)
    got = solve_positive_definite(a.copy(), w.T.copy(order="F"))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-10)


def test_not_positive_definite_is_an_error() -> None:
    h = np.diag([1.0, -1.0, 2.0])
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        upper_inverse_factor(h)


def test_damped_copies_unless_told_and_clipped_channels_leaves_input_alone() -> None:
    h = _spd(12, seed=3)
    before = h.copy()
    out = damped(h, 0.1)
    np.testing.assert_array_equal(h, before)
    np.testing.assert_allclose(out, before + 0.1 * np.eye(12))
    same = damped(h, 0.1, copy=False)
    assert same is h
    np.testing.assert_allclose(h, before + 0.1 * np.eye(12))

    h = before.copy()
    h[0, 0] *= 100.0  # one hot channel, capped
    keep = h.copy()
    clipped = clipped_channels(h, clip=2.0)
    np.testing.assert_array_equal(h, keep)
    assert np.isclose(np.trace(clipped) / 12, 1.0)
    assert clipped[0, 0] < h[0, 0] / (np.trace(h) / 12)


@pytest.mark.parametrize("n", [1, 5, 512, 1100])
def test_prepare_hessian_in_place_is_the_formula_bitwise(n: int) -> None:
    raw = np.random.default_rng(n).standard_normal((n, n)) + n * np.eye(n)  # not symmetric: sums as summed
    expected = (raw + raw.T) * 0.5
    expected /= np.trace(expected) / n
    np.testing.assert_array_equal(prepare_hessian(raw), expected)  # copy: raw untouched
    own = raw.copy()
    out = prepare_hessian(own, copy=False)
    assert out is own
    np.testing.assert_array_equal(out, expected)


def test_channel_scaled_error_equals_error_under_clipped_h() -> None:
    class Rebuilt:
        def __init__(self, w: np.ndarray) -> None:
            self.w = w

        def _dequantize64(self) -> np.ndarray:
            return self.w

    rng = np.random.default_rng(4)
    x = rng.standard_normal((200, 30))
    x[:, 3] *= 40.0  # a massive channel for the cap to bite on
    h = prepare_hessian(x.T @ x)
    w = rng.standard_normal((8, 30))
    q = Rebuilt(w + 0.1 * rng.standard_normal((8, 30)))
    scale = channel_scale(h, 3.0)
    assert scale.min() < 0.5
    expected = relative_error(w, q, clipped_channels(h, 3.0))
    assert np.isclose(relative_error(w, q, h, scale), expected, rtol=1e-12)
    assert not np.isclose(relative_error(w, q, h), expected, rtol=1e-3)


def test_corrected_target_is_the_formula_on_raw_sums() -> None:
    rng = np.random.default_rng(5)
    n, m = 24, 7
    x_fp = rng.standard_normal((300, n)) * 3.0
    x_q = x_fp + 0.2 * rng.standard_normal((300, n))
    raw_h, raw_c = x_q.T @ x_q, x_fp.T @ x_q  # H = Σ x̃ x̃ᵀ, C = Σ x x̃ᵀ
    w = rng.standard_normal((m, n))
    ridge = CORRECTION_DAMPING * np.trace(raw_h) / n
    expected = w @ (raw_c + ridge * np.eye(n)) @ np.linalg.inv(raw_h + ridge * np.eye(n))
    mean_diag = np.trace(raw_h) / n
    h = prepare_hessian(raw_h)
    got = corrected_target(w, *correction_moments(h, raw_c.copy(), mean_diag))
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-9)


# --- column blocks -----------------------------------------------------------------------------------

def test_column_blocks_split_the_output_error_exactly():
    rng = np.random.default_rng(2)
    x = anisotropic_inputs(23, 300, 1)
    h = prepare_hessian(x.T @ x) + 0.1 * np.eye(23)
    w, w_hat = rng.standard_normal((5, 23)), rng.standard_normal((5, 23))
    blocks = column_blocks(h, [7, 9, 7])
    target, total = w.copy(), 0.0
    for cs, schur, carry in blocks:
        error = target[:, cs] - w_hat[:, cs]  # block k's error against its carried target
        total += np.trace(error @ schur @ error.T)
        if carry is not None:
            target[:, cs.stop:] += error @ carry
    assert total == pytest.approx(output_error(w, w_hat, h), rel=1e-10)
    # The last block is solved under its own block of H; the first under its Schur complement.
    np.testing.assert_allclose(blocks[-1][1], h[16:, 16:], atol=1e-10)
    schur = h[:7, :7] - h[:7, 7:] @ np.linalg.solve(h[7:, 7:], h[7:, :7])
    np.testing.assert_allclose(blocks[0][1], schur, atol=1e-10)
    assert column_blocks(h, [23])[0][1] is h
