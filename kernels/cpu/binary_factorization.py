"""Numba kernels for the ±1 factorization X ≈ α·U·Vᵀ, U ∈ {±1}^{m×l}, V ∈ {±1}^{n×l}.

Both factors are stored row-major with the inner dimension l last ("rows × l"), so the U-update given
V and the V-update given U are the same kernel applied to (X, U, V) and (Xᵀ, V, U).

All kernels work on a batch of same-shape problems (leading axis b) and parallelize over
(problem, row) pairs. Each row is processed by a single thread in a fixed order, which keeps results
bit-identical for any number of threads.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np


def gram(v: np.ndarray) -> np.ndarray:
    """vᵀv per problem with the diagonal set to the row count n: (B, n, l) -> (B, l, l).

    Setting the diagonal to n gives the mean-field expectation of VᵀV (each ±1 entry squares to 1);
    for exact signs it changes nothing. (BLAS; OpenBLAS splits GEMMs over output blocks only, so the
    result does not depend on the thread count.)
    """
    g = np.matmul(v.transpose(0, 2, 1), v)
    idx = np.arange(v.shape[2])
    g[:, idx, idx] = v.shape[1]
    return g


@nb.njit(inline="always", cache=True)
def fast_tanh(x: np.float32) -> np.float32:
    """tanh by its [7/6] Padé approximant (from Lambert's continued fraction), |error| < 1.1e-4.

    The approximant reaches 1 at |x| ≈ 4.97, beyond which the result is clamped to ±1. It is about
    four times faster than libm's tanh, which sits on the sequential critical path of the sweep; the
    annealing only needs a smooth, odd, saturating response, not tanh to the last digit.
    """
    if x >= np.float32(4.97):
        return np.float32(1.0)
    if x <= np.float32(-4.97):
        return np.float32(-1.0)
    x2 = x * x
    num = np.float32(135135.0) + x2 * (np.float32(17325.0) + x2 * (np.float32(378.0) + x2))
    den = np.float32(135135.0) + x2 * (np.float32(62370.0) + x2 * (np.float32(3150.0) + x2 * np.float32(28.0)))
    return x * num / den


# Below this many multiply-adds per sweep (B·m·l²) the serial kernel is used: a parallel region costs
# tens of microseconds, and when the cores are shared with other work every region can stall a whole
# scheduler time slice waiting for its slowest thread (measured: 12 batched 96×96 groups ran ~15×
# slower than expected beside two busy processes).
PARALLEL_MIN_WORK = 400_000


def row_sweep(h: np.ndarray, gu: np.ndarray, u: np.ndarray, g: np.ndarray, alpha: np.ndarray,
              inv_temp: np.ndarray, hard: bool) -> int:
    """One Gauss-Seidel pass over every entry of u; returns the number of sign changes.

    Dispatches to a multithreaded or a serial build of :func:`_row_sweep` by problem size; both give
    identical results.
    """
    nbatch, m, l = u.shape
    kernel = _row_sweep_parallel if nbatch * m * l * l >= PARALLEL_MIN_WORK else _row_sweep_serial
    return kernel(h, gu, u, g, alpha, inv_temp, hard)


def _row_sweep(h: np.ndarray, gu: np.ndarray, u: np.ndarray, g: np.ndarray, alpha: np.ndarray,
               inv_temp: np.ndarray, hard: bool) -> int:
    """One Gauss-Seidel pass over every entry of u; returns the number of sign changes.

    For row i of problem b the energy is E(u_i) = -2α u_i·h_i + α² u_iᵀ G u_i with h = X V and
    G = VᵀV (diagonal n). The local field on entry j is f_j = 2α (h_ij - α Σ_{k≠j} G_jk u_ik).
    Soft (mean-field annealing): u_ij ← tanh(f_j / T) (:func:`fast_tanh`). Hard (T = 0, exact
    descent): u_ij ← sign(f_j), kept when f_j = 0. The product G u_i (passed in as gu = U G) is
    updated incrementally, O(l) per changed entry.

    All arrays are float32. h, gu: (B, m, l), gu is overwritten; u: (B, m, l) updated in place;
    g: (B, l, l) from :func:`gram`; alpha, inv_temp: (B,).
    """
    nbatch, m, l = u.shape
    flips = np.zeros(nbatch * m, dtype=np.int64)
    for task in nb.prange(nbatch * m):
        b = task // m
        i = task % m
        ui = u[b, i]
        hi = h[b, i]
        gui = gu[b, i]
        gb = g[b]
        a = alpha[b]
        beta = inv_temp[b]
        two_a = np.float32(2.0) * a
        one = np.float32(1.0)
        count = 0
        for j in range(l):
            old = ui[j]
            field = two_a * (hi[j] - a * (gui[j] - gb[j, j] * old))
            if hard:
                new = old
                if field > 0:
                    new = one
                elif field < 0:
                    new = -one
            else:
                new = fast_tanh(field * beta)
            delta = np.float32(new - old)
            if delta != 0:
                if (new > 0.0) != (old > 0.0):
                    count += 1
                ui[j] = new
                gj = gb[j]
                for c in range(l):
                    gui[c] += delta * gj[c]
        flips[task] = count
    return flips.sum()


_row_sweep_parallel = nb.njit(parallel=True, cache=True)(_row_sweep)
_row_sweep_serial = nb.njit(parallel=False, cache=True)(_row_sweep)


def coupled_row_sweep(p: np.ndarray, q: np.ndarray, v: np.ndarray, k: np.ndarray, hm: np.ndarray, alpha: np.ndarray,
                      inv_temp: np.ndarray, hard: bool) -> int:
    """One Gauss-Seidel pass over every entry of v when its rows are coupled through a weight H.

    The V-update of the output-aware objective tr((X - α U Vᵀ) H (X - α U Vᵀ)ᵀ): the energy is
    -2α Σ_aj v_aj P_aj + α² Σ_ab H_ab v_aᵀ K v_b with P = H Xᵀ U and K = UᵀU (diagonal m). Rows no
    longer separate, so they are swept in order; for row a the coupling Σ_b H_ab (V K)_b is formed
    once (O(n l)) and then kept up to date while the row's l entries change (O(l) per change), and
    q = V K is updated in place so later rows see the new row. Field on entry (a, j):
    f = 2α (P_aj - α (Σ_b H_ab q_bj - H_aa K_jj v_aj)); soft/hard updates as in :func:`_row_sweep`.
    Problems run in parallel, rows within a problem in a fixed order: bit-identical for any thread
    count. With H = I this is exactly the row sweep of the unweighted objective.

    float32 arrays: p, q, v (B, n, l) (q and v updated in place); k (B, l, l); hm (B, n, n);
    alpha, inv_temp (B,). Returns the number of sign changes.
    """
    nbatch, n, l = v.shape
    parallel = nbatch > 1 and nbatch * n * n * l >= PARALLEL_MIN_WORK
    kernel = _coupled_sweep_parallel if parallel else _coupled_sweep_serial
    return kernel(p, q, v, k, hm, alpha, inv_temp, hard)


def _coupled_sweep(p, q, v, k, hm, alpha, inv_temp, hard):
    nbatch, n, l = v.shape
    flips = np.zeros(nbatch, dtype=np.int64)
    for b in nb.prange(nbatch):
        a_ = alpha[b]
        beta = inv_temp[b]
        two_a = np.float32(2.0) * a_
        one = np.float32(1.0)
        kb = k[b]
        qb = q[b]
        hq = np.empty(l, dtype=np.float32)
        count = 0
        for row in range(n):
            hrow = hm[b, row]
            hq[:] = 0.0
            for other in range(n):
                w = hrow[other]
                if w != 0:
                    qo = qb[other]
                    for c in range(l):
                        hq[c] += w * qo[c]
            h_self = hrow[row]
            vr = v[b, row]
            pr = p[b, row]
            qr = qb[row]
            for j in range(l):
                old = vr[j]
                field = two_a * (pr[j] - a_ * (hq[j] - h_self * kb[j, j] * old))
                if hard:
                    new = old
                    if field > 0:
                        new = one
                    elif field < 0:
                        new = -one
                else:
                    new = fast_tanh(field * beta)
                delta = np.float32(new - old)
                if delta != 0:
                    if (new > 0.0) != (old > 0.0):
                        count += 1
                    vr[j] = new
                    kj = kb[j]
                    step = h_self * delta
                    for c in range(l):
                        qr[c] += delta * kj[c]
                        hq[c] += step * kj[c]
        flips[b] = count
    return flips.sum()


_coupled_sweep_parallel = nb.njit(parallel=True, cache=True)(_coupled_sweep)
_coupled_sweep_serial = nb.njit(parallel=False, cache=True)(_coupled_sweep)


@nb.njit(parallel=True, cache=True)
def spectral_norm(x: np.ndarray, iters: int) -> np.ndarray:
    """Largest singular value of each x[b] (B, m, n) by power iteration on xᵀx from a fixed start."""
    nbatch, m, n = x.shape
    out = np.zeros(nbatch)
    for b in nb.prange(nbatch):
        xb = x[b]
        vec = np.empty(n)
        for k in range(n):
            vec[k] = 1.0 + 0.5 * math.sin(1.0 + k)  # fixed, generic start vector
        tmp = np.empty(m)
        sigma = 0.0
        for _ in range(iters):
            norm = math.sqrt((vec * vec).sum())
            if norm == 0.0:
                break
            vec /= norm
            for r in range(m):
                s = 0.0
                for k in range(n):
                    s += xb[r, k] * vec[k]
                tmp[r] = s
            sigma = math.sqrt((tmp * tmp).sum())
            vec[:] = 0.0
            for r in range(m):
                t = tmp[r]
                for k in range(n):
                    vec[k] += t * xb[r, k]
        out[b] = sigma
    return out
