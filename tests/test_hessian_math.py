"""The in-place LAPACK helpers of the H maths equal the plain numpy formulas they replace."""
from __future__ import annotations

import numpy as np
import pytest

from bqq.solver.hessian_math import (
    clipped_channels,
    damped,
    solve_positive_definite,
    upper_inverse_factor,
)


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
