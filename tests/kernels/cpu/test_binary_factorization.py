"""The CPU solver's sweeps (kernels/cpu/binary_factorization.py): the blocked row phase against an entry-by-entry
Gauss-Seidel pass, its thread splits, and the coupled (output-aware) row sweep."""


import numba
import numpy as np
import pytest

import bqq
from bqq_kernels.cpu import coupled_row_sweep
from bqq_kernels.cpu import gram_blocks as gram
from bqq_kernels.cpu.binary_factorization import BLOCK, ROW_CHUNK, gram_blocks, row_phase


def entry_by_entry(x, u, v, g, alpha, inv_temp, hard):
    """The pass as written in the docstring, in float64: every entry in order, the field from all others."""
    u = u.astype(np.float64)
    for b in range(u.shape[0]):
        h = x[b].astype(np.float64) @ v[b]
        for i in range(u.shape[1]):
            for j in range(u.shape[2]):
                f = 2 * alpha[b] * (h[i, j] - alpha[b] * (g[b, j] @ u[b, i] - g[b, j, j] * u[b, i, j]))
                u[b, i, j] = (np.sign(f) if f != 0 else u[b, i, j]) if hard else np.tanh(f * inv_temp[b])
    return u


def t(a):
    return np.ascontiguousarray(a.transpose(0, 2, 1))


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_blocked_phase_is_the_entry_by_entry_pass(hard):
    rng = np.random.default_rng(0)
    nbatch, m, n, l = 2, ROW_CHUNK + 37, 50, 2 * BLOCK + 22  # two row chunks, three bands (one partial)
    x = rng.standard_normal((nbatch, m, n)).astype(np.float32)
    u = rng.uniform(-1, 1, (nbatch, m, l)).astype(np.float32)
    v = rng.uniform(-1, 1, (nbatch, n, l)).astype(np.float32)
    if hard:
        u, v = np.sign(u), np.sign(v)
    g = gram_blocks(t(v))
    alpha, inv_temp = np.array([0.05, 0.02], np.float32), np.array([0.5, 3.0], np.float32)
    expected = entry_by_entry(x, u, v, g, alpha, inv_temp, hard)
    ut = t(u)
    flips = row_phase(t(x), ut, t(v), g, alpha, inv_temp, hard)
    got = ut.transpose(0, 2, 1)
    if hard:
        assert np.array_equal(got, expected)
        assert flips == int((np.sign(got) != np.sign(u)).sum()) > 0
    else:
        np.testing.assert_allclose(got, expected, atol=2e-4)  # fast_tanh's error, float32 sums
        assert flips == 0


def test_gram_blocks_is_the_gram_matrix_with_n_on_the_diagonal():
    vt = np.random.default_rng(1).uniform(-1, 1, (3, BLOCK + 9, 40)).astype(np.float32)
    g = gram_blocks(vt)
    expected = np.matmul(vt, t(vt))
    idx = np.arange(vt.shape[1])
    expected[:, idx, idx] = 40
    np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-4)
    assert np.array_equal(g, g.transpose(0, 2, 1))


@pytest.mark.parametrize("shape", [(ROW_CHUNK + 44, 60), (24, 2 * ROW_CHUNK + 3)], ids=["tall", "wide"])
def test_row_chunks_over_threads_give_the_codes_of_one_thread(shape):
    w = np.random.default_rng(3).standard_normal(shape)
    before = numba.get_num_threads()
    results = []
    for threads in (min(2, numba.config.NUMBA_NUM_THREADS), 1):
        numba.set_num_threads(threads)
        try:
            results.append(bqq.compress(w, bits=2, sweeps=15, progress=False))
        finally:
            numba.set_num_threads(before)
    a, b = results
    assert all(np.array_equal(p, q) for p, q in zip(a.y + a.z, b.y + b.z, strict=True))
    assert np.array_equal(a.scales, b.scales) and np.array_equal(a.offset, b.offset)


# --- the coupled (output-aware) row sweep ------------------------------------------------------------

def test_coupled_sweep_with_identity_weight_is_the_row_sweep():
    rng = np.random.default_rng(0)
    b, n, m, l = 2, 13, 10, 7
    x = rng.standard_normal((b, m, n)).astype(np.float32)
    u = rng.uniform(-1, 1, (b, m, l)).astype(np.float32)
    v1 = rng.uniform(-1, 1, (b, n, l)).astype(np.float32)
    v2 = v1.copy()
    k = gram(np.ascontiguousarray(u.transpose(0, 2, 1)))
    alpha = np.full(b, 0.3, np.float32)
    beta = np.full(b, 2.0, np.float32)
    p = np.matmul(x.transpose(0, 2, 1), u)
    for hard in (False, True):
        v1t = np.ascontiguousarray(v1.transpose(0, 2, 1))  # the row phase's entry-major factors
        flips1 = row_phase(x, v1t, np.ascontiguousarray(u.transpose(0, 2, 1)), k, alpha, beta, hard)
        v1 = v1t.transpose(0, 2, 1)
        eye = np.repeat(np.eye(n, dtype=np.float32)[None], b, axis=0)
        flips2 = coupled_row_sweep(p, np.matmul(v2, k), v2, k, eye, alpha, beta, hard)
        np.testing.assert_allclose(v1, v2, atol=1e-6)
        if hard:  # (the row phase counts sign changes in hard sweeps only)
            assert flips1 == flips2


def test_coupled_sweep_lowers_the_weighted_energy_when_hard():
    rng = np.random.default_rng(1)
    n, m, l = 12, 8, 5
    xh = rng.standard_normal((n, 40))
    hm = (xh @ xh.T / 40).astype(np.float32)[None]
    x = rng.standard_normal((1, m, n)).astype(np.float32)
    u = np.sign(rng.standard_normal((1, m, l))).astype(np.float32)
    v = np.sign(rng.standard_normal((1, n, l))).astype(np.float32)
    alpha = np.array([0.4], np.float32)

    def energy(v):
        e = x[0] - alpha[0] * u[0] @ v[0].T
        return float(np.trace(e @ hm[0] @ e.T))

    before = energy(v)
    k = gram(np.ascontiguousarray(u[0].T)[None])
    p = np.matmul(np.matmul(x, hm).transpose(0, 2, 1), u)
    coupled_row_sweep(p, np.matmul(v, k), v, k, hm, alpha, np.zeros(1, np.float32), True)
    assert energy(v) < before
    assert set(np.unique(v)) <= {-1.0, 1.0}
