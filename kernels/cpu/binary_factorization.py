"""Numba kernels for the ±1 factorization X ≈ α·U·Vᵀ, U ∈ {±1}^{m×l}, V ∈ {±1}^{n×l}.

Both factors are stored row-major with the inner dimension l last ("rows × l"), so the U-update given
V and the V-update given U are the same kernel applied to (X, U, V) and (Xᵀ, V, U).

All kernels work on a batch of same-shape problems (leading axis b) and parallelize over
(problem, row) pairs. Each row is processed by a single thread in a fixed order, which keeps results
bit-identical for any number of threads.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, MutableMapping

import numba as nb
import numpy as np

from .builds import parallel_and_serial

POLICY_ENV = "BQQ_THREAD_POLICY"
# OpenMP runtimes' own switches: a user who set any of them has chosen a wait policy; keep theirs.
WAIT_SWITCHES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def policy_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """False when ``BQQ_THREAD_POLICY`` is off/0/false/no: leave the threading libraries' defaults."""
    return environ.get(POLICY_ENV, "on").strip().lower() not in ("off", "0", "false", "no")


def prefer_passive_waiting(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE unless the policy is off or a wait switch is already set; returns
    whether it set it.

    The sweeps below are thousands of short parallel regions per stack with serial BLAS between them.
    OpenMP's default keeps idle workers spinning after every region: measured on 2 cores, a solve used
    ~30 % more CPU time than with passive waiting, and beside another busy process the spinning threads
    took the cores its working threads needed. Takes effect for OpenMP runtimes loaded afterwards
    (numba's "omp" threading layer loads its runtime at the first parallel call); see bqq.threads.
    """
    if not policy_enabled(environ) or any(name in environ for name in WAIT_SWITCHES):
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


prefer_passive_waiting()


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
    updated incrementally, and only where the rest of the pass still reads it (entries after j).

    Soft passes sweep ROW_TILE rows of a problem in lockstep (:func:`_sweep_tile`). Every entry
    still sees exactly the additions, in the same order, as in a row-by-row pass with a full update of
    G u_i, so results are bit-identical to it and independent of the thread count.

    All arrays are float32. h, gu: (B, m, l), gu is overwritten (left stale after the pass); u: (B, m, l)
    updated in place; g: (B, l, l) from :func:`gram`; alpha, inv_temp: (B,).
    """
    nbatch, m, _ = u.shape
    tile = 1 if hard else ROW_TILE
    tiles = (m + tile - 1) // tile
    flips = np.zeros(nbatch * tiles, dtype=np.int64)
    for task in nb.prange(nbatch * tiles):
        b = task // tiles
        first = (task % tiles) * tile
        if tile == 1 or first + tile > m:
            count = 0
            for i in range(first, min(first + tile, m)):
                count += _sweep_row(h[b, i], gu[b, i], u[b, i], g[b], alpha[b], inv_temp[b], hard)
            flips[task] = count
        else:
            flips[task] = _sweep_tile(h[b], gu[b], u[b], g[b], alpha[b], inv_temp[b], first)
    return flips.sum()


@nb.njit(inline="always", cache=True)
def _update(old: np.float32, field: np.float32, beta: np.float32, hard: bool) -> np.float32:
    """The new value of an entry with local field ``field``: tanh(field·β), or sign(field) when hard
    (the old value kept for a zero field)."""
    if hard:
        if field > 0:
            return np.float32(1.0)
        if field < 0:
            return np.float32(-1.0)
        return old
    return fast_tanh(field * beta)


@nb.njit(inline="always", cache=True)
def _add_scaled_tail(y: np.ndarray, scale: np.float32, x: np.ndarray, start: int) -> None:
    """y[start:] += scale · x[start:], elementwise.

    Written over slices: the same loop over ``range(start, n)`` on the whole rows is not vectorized by
    LLVM (measured: 2x slower), the loop over the slices is (AVX2)."""
    yt = y[start:]
    xt = x[start:]
    for c in range(yt.shape[0]):
        yt[c] += scale * xt[c]


@nb.njit(inline="always", cache=True)
def _sweep_row(hi, gui, ui, gb, a, beta, hard):
    """One row of :func:`_row_sweep`; returns its sign changes."""
    two_a = np.float32(2.0) * a
    count = 0
    for j in range(ui.shape[0]):
        old = ui[j]
        new = _update(old, two_a * (hi[j] - a * (gui[j] - gb[j, j] * old)), beta, hard)
        delta = np.float32(new - old)
        if delta != 0:
            if (new > 0.0) != (old > 0.0):
                count += 1
            ui[j] = new
            _add_scaled_tail(gui, delta, gb[j], j + 1)
    return count


ROW_TILE = 4  # rows swept in lockstep by a soft pass (:func:`_sweep_tile` is written out for this many)


@nb.njit(inline="always", cache=True)
def _sweep_tile(hb, gub, ub, gb, a, beta, first):
    """ROW_TILE rows (first, first + 1, …) of one problem in a soft pass; returns their sign changes.

    The four rows' tanh evaluations are independent, so they overlap in the pipeline instead of each
    waiting for the previous entry's update. An unchanged entry (delta = 0) adds zero to finite partial
    products: the same values as skipping it."""
    two_a = np.float32(2.0) * a
    u0, u1, u2, u3 = ub[first], ub[first + 1], ub[first + 2], ub[first + 3]
    h0, h1, h2, h3 = hb[first], hb[first + 1], hb[first + 2], hb[first + 3]
    g0, g1, g2, g3 = gub[first], gub[first + 1], gub[first + 2], gub[first + 3]
    count = 0
    for j in range(ub.shape[1]):
        gjj = gb[j, j]
        o0, o1, o2, o3 = u0[j], u1[j], u2[j], u3[j]
        n0 = fast_tanh(two_a * (h0[j] - a * (g0[j] - gjj * o0)) * beta)
        n1 = fast_tanh(two_a * (h1[j] - a * (g1[j] - gjj * o1)) * beta)
        n2 = fast_tanh(two_a * (h2[j] - a * (g2[j] - gjj * o2)) * beta)
        n3 = fast_tanh(two_a * (h3[j] - a * (g3[j] - gjj * o3)) * beta)
        count += ((n0 > 0.0) != (o0 > 0.0)) + ((n1 > 0.0) != (o1 > 0.0))
        count += ((n2 > 0.0) != (o2 > 0.0)) + ((n3 > 0.0) != (o3 > 0.0))
        u0[j], u1[j], u2[j], u3[j] = n0, n1, n2, n3
        gj = gb[j]
        _add_scaled_tail(g0, np.float32(n0 - o0), gj, j + 1)
        _add_scaled_tail(g1, np.float32(n1 - o1), gj, j + 1)
        _add_scaled_tail(g2, np.float32(n2 - o2), gj, j + 1)
        _add_scaled_tail(g3, np.float32(n3 - o3), gj, j + 1)
    return count


_row_sweep_parallel, _row_sweep_serial = parallel_and_serial(_row_sweep)


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


_coupled_sweep_parallel, _coupled_sweep_serial = parallel_and_serial(_coupled_sweep)


@nb.njit(parallel=True, cache=True, nogil=True)
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
