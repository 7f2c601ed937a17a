"""The CPU backend of the solver (bqq.solver.numpy_backend): its codes, bit for bit, against saved ones (refactoring
must not change a single bit), and its refit under H.

The fixture was last written by the blocked row phase (GEMMs plus 64-wide bands, entry-major factors); before
that, by the code before the solver package (commit 433e1a8). A change that alters CPU codes on purpose (a
faster sweep, another schedule) regenerates it with ``python -m tests.solver.test_numpy_backend`` and says so
in its commit, with the MSE table showing no loss. (Bits are for this CPU's instruction set: BLAS and the
fused multiply-adds of the sweep may round differently on another.)
"""

from pathlib import Path

import numpy as np
import pytest

import bqq
from bqq.solver import refit_scalars
from tests.helpers import anisotropic_inputs

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "solver_codes.npz"


def inputs() -> dict:
    """The matrices and H of the saved cases (the same draws as when the fixture was written)."""
    rng = np.random.default_rng(0)
    rng.standard_normal((24, 30))
    w2 = rng.standard_normal((40, 33))
    x = rng.standard_normal((200, 33)) * np.linspace(0.2, 3, 33)
    w3 = rng.standard_normal((32, 48))
    x3 = rng.standard_normal((300, 48))
    x3[:, 3] *= 20
    return {"w2": w2, "h2": x.T @ x, "w3": w3, "h3": x3.T @ x3}


CASES = {
    # t_start as when the fixture was written (the default became 0.6 later, on purpose).
    "plain_groups": ("w2", None, {"bits": 2, "group_size": (13, 11), "seed": 2, "sweeps": 30, "restarts": 2,
                                  "t_start": 0.95}),
    "h_col_blocks": ("w2", "h2", {"bits": 2, "group_size": (20, 11), "seed": 5, "sweeps": 30}),
    "h_col_blocks_restarts": ("w3", "h3", {"bits": 2, "group_size": (11, 16), "seed": 6, "sweeps": 20,
                                           "restarts": 2}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_cpu_codes_are_bit_identical_to_the_saved_ones(name):
    saved = np.load(FIXTURE)
    data = inputs()
    w, h, opts = CASES[name]
    q = bqq.compress(data[w], hessian=None if h is None else data[h], **opts)
    for g in range(len(q.y)):
        assert np.array_equal(q.y[g], saved[f"{name}/y{g}"]), g
        assert np.array_equal(q.z[g], saved[f"{name}/z{g}"]), g
    assert np.array_equal(q.scales, saved[f"{name}/scales"])
    assert np.array_equal(q.offset, saved[f"{name}/offset"])


def write_fixture() -> None:
    """Save the codes of every case (run on purpose only, see the module docstring)."""
    data, arrays = inputs(), {}
    for name, (w, h, opts) in CASES.items():
        q = bqq.compress(data[w], hessian=None if h is None else data[h], **opts)
        for g in range(len(q.y)):
            arrays[f"{name}/y{g}"], arrays[f"{name}/z{g}"] = q.y[g], q.z[g]
        arrays[f"{name}/scales"], arrays[f"{name}/offset"] = q.scales, q.offset
    np.savez_compressed(FIXTURE, **arrays)


# --- the refit under H -------------------------------------------------------------------------------

@pytest.mark.parametrize("stacks", [1, 2])
def test_weighted_refit_equals_a_least_squares_solve(stacks):
    rng = np.random.default_rng(stacks)
    m, n, l = 9, 11, 5
    w = rng.standard_normal((m, n))
    ys = rng.integers(0, 2, (stacks, m, l))
    zs = rng.integers(0, 2, (stacks, l, n))
    x = anisotropic_inputs(n, 200, 3)
    h = x.T @ x
    scales, offset = refit_scalars(w, ys, zs, h)
    # Direct: minimize Σ_x ‖(W - Ŵ) x‖² = ‖(W - Ŵ) Xᵀ‖² as an ordinary least squares over the 3p+1 features.
    feats = []
    for y, z in zip(ys, zs, strict=True):
        feats += [y @ z, np.repeat(y.sum(1, keepdims=True), n, 1), np.repeat(z.sum(0, keepdims=True), m, 0)]
    feats.append(np.ones((m, n)))
    design = np.stack([(f @ x.T).ravel() for f in feats], axis=1)
    coef = np.linalg.lstsq(design, (w @ x.T).ravel(), rcond=None)[0]
    np.testing.assert_allclose(np.append(scales.ravel(), offset), coef, rtol=1e-7, atol=1e-9)


if __name__ == "__main__":
    write_fixture()
