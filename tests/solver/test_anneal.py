"""bqq.solver.anneal (through solve_sign_factors): the output-aware search under H."""

import numpy as np
import pytest

from bqq.methods.bqq import inner_dim
from bqq.solver import (
    prepare_hessian,
    refit_scalars,
    solve_sign_factors,
)
from tests.helpers import anisotropic_inputs, output_error

SOLVE = {"sweeps": 80, "t_start": 0.95, "t_end": 0.18, "alpha_scale": 0.9, "polish_rounds": 50}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_output_aware_search_beats_the_data_free_one_under_h(seed):
    rng = np.random.default_rng(seed)
    m, n = 24, 32
    w = rng.standard_normal((m, n))
    x = anisotropic_inputs(n, 500, seed + 10)
    h = prepare_hessian(x.T @ x) + 0.01 * np.eye(n)
    l = inner_dim((m, n), 1.0)
    fits = []
    for weight in (None, h[None]):
        u, v = solve_sign_factors(w[None], l, [(seed,)], hessian=weight, **SOLVE)
        ys, zs = (u > 0).astype(np.uint8), (v > 0).astype(np.uint8).transpose(0, 2, 1)
        scales, offset = refit_scalars(w, ys, zs, h)  # both judged with their best scalars under H
        y, z = ys[0].astype(float), zs[0].astype(float)
        (r, s, t), = scales
        fits.append(output_error(w, r * y @ z + s * y.sum(1, keepdims=True) + t * z.sum(0, keepdims=True) + offset, h))
    data_free, aware = fits
    assert aware < 0.9 * data_free
