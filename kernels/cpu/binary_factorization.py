"""Numba kernels for the ±1 factorization X ≈ α·U·Vᵀ, U ∈ {±1}^{m×l}, V ∈ {±1}^{n×l}.

The row phase (:func:`row_phase`) keeps both factors entry-major, Uᵀ (B, l, m) and Vᵀ (B, l, n), so the
U-update given V and the V-update given U are the same code applied to (Xᵀ, Uᵀ, Vᵀ) and (X, Vᵀ, Uᵀ), and
one vector instruction updates one entry of many rows. It works on a batch of same-shape problems in
fixed row chunks and bands and is serial: callers spread problems or row chunks over threads
(bqq.solver.numpy_backend), so results are bit-identical for any number of threads. The coupled sweep
of the output-aware V phase keeps row-major factors and parallelizes over problems.
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
    OpenMP's default keeps idle workers spinning after every region: a solve then uses more CPU time than
    with passive waiting, and beside another busy process the spinning threads take the cores its working
    threads need (``benchmarks/busy_cpu.py``; results in ``benchmarks/results/busy_cpu*.md``). Takes
    effect for OpenMP runtimes loaded afterwards (numba's "omp" threading layer loads its runtime at the
    first parallel call); see bqq.threads.
    """
    if not policy_enabled(environ) or any(name in environ for name in WAIT_SWITCHES):
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


prefer_passive_waiting()


FMA = {"contract"}  # let LLVM fuse multiply-adds (deterministic for a given CPU, like BLAS)


@nb.njit(inline="always", cache=True, error_model="numpy", fastmath=FMA)
def fast_tanh(x: np.float32) -> np.float32:
    """tanh by its [7/6] Padé approximant (from Lambert's continued fraction), |error| < 1.1e-4.

    The approximant reaches 1 at |x| ≈ 4.97: the argument is clamped there and the result to [-1, 1],
    with min/max rather than branches so that a loop over rows vectorizes. It is several times faster
    than libm's tanh; the annealing only needs a smooth, odd, saturating response, not tanh to the
    last digit.
    """
    lim = np.float32(4.97)
    x = lim if x > lim else (-lim if x < -lim else x)
    x2 = x * x
    num = np.float32(135135.0) + x2 * (np.float32(17325.0) + x2 * (np.float32(378.0) + x2))
    den = np.float32(135135.0) + x2 * (np.float32(62370.0) + x2 * (np.float32(3150.0) + x2 * np.float32(28.0)))
    one = np.float32(1.0)
    return min(max(x * num / den, -one), one)


# Below this many multiply-adds (B·n²·l) the coupled sweep runs its serial build: a parallel region costs
# tens of microseconds, and beside other work every region can stall a scheduler time slice.
PARALLEL_MIN_WORK = 400_000


BLOCK = 64  # entries of a row updated one by one against a BLOCK x BLOCK Gram block; the rest is GEMMs
ROW_CHUNK = 256  # rows per GEMM call: fixed, so a problem's arithmetic never depends on batching or threads
TILE = 64  # rows swept in lockstep inside a band (numba vectorizes loops of 32 or more)


def gram_blocks(vt: np.ndarray) -> np.ndarray:
    """v vᵀ per problem with the diagonal set to the column count n: (B, l, n) -> (B, l, l).

    For the entry-major factor vt = Vᵀ this is VᵀV. Setting the diagonal to n gives the mean-field
    expectation of VᵀV (each ±1 entry squares to 1); for exact signs it changes nothing. Formed a band of
    BLOCK columns at a time (:func:`gram_band`), so each problem's Gram matrix is the same GEMM calls
    alone or in a batch, on one thread or several.
    """
    g = np.empty((vt.shape[0], vt.shape[1], vt.shape[1]), np.float32)
    for j0 in range(0, vt.shape[1], BLOCK):
        gram_band(vt, g, j0)
    return g


def gram_band(vt: np.ndarray, g: np.ndarray, j0: int) -> None:
    """Columns j0 .. j0 + BLOCK of g = vt vtᵀ (diagonal n): the part on and below the diagonal block by
    one GEMM, the part above mirrored from the rows below (G is symmetric). Bands write disjoint entries."""
    band = slice(j0, min(j0 + BLOCK, vt.shape[1]))
    np.matmul(vt[:, j0:], vt[:, band].transpose(0, 2, 1), out=g[:, j0:, band])
    g[:, band, band.stop:] = g[:, band.stop:, band].transpose(0, 2, 1)
    idx = np.arange(band.start, band.stop)
    g[:, idx, idx] = vt.shape[2]


def row_phase(xt: np.ndarray, ut: np.ndarray, vt: np.ndarray, g: np.ndarray, alpha: np.ndarray,
              inv_temp: np.ndarray, hard: bool, rows: slice | None = None) -> int:
    """One Gauss-Seidel pass over every entry of U (rows ``rows``, default all) given V; returns the sign
    changes of a hard pass (0 for a soft one).

    For row i of problem b the energy is E(u_i) = -2α u_i·h_i + α² u_iᵀ G u_i with h = X V and G (from
    :func:`gram_blocks`, or Vᵀ H V under an output weight). The local field on entry j is
    f_j = 2α (h_ij - α Σ_{k≠j} G_jk u_ik). Soft (mean-field annealing): u_ij ← tanh(f_j / T); hard
    (T = 0, exact descent): u_ij ← sign(f_j), kept when f_j = 0.

    Blocked: the entries of a row go BLOCK at a time. For band J the sums over the other bands
    (earlier ones already updated, later ones not) come from one GEMM over the rows, G[J, :] U;
    inside the band each entry is updated in order and its change carried to the band's later entries
    through G[J, J] (:func:`block_sweep`). That is the arithmetic of an entry-by-entry pass; only the
    order of the float additions differs.

    Factors are entry-major (the rows of U are the columns of ut), float32: xt = Xᵀ (B, n, m),
    ut (B, l, m) updated in place, vt (B, l, n), g (B, l, l); alpha, inv_temp (B,).
    """
    _, l, m = ut.shape
    rows = slice(0, m) if rows is None else rows
    flips = 0
    for r0 in range(rows.start, rows.stop, ROW_CHUNK):
        part = slice(r0, min(r0 + ROW_CHUNK, rows.stop))
        ht = np.matmul(vt, xt[:, :, part])
        for j0 in range(0, l, BLOCK):
            band = slice(j0, min(j0 + BLOCK, l))
            gut = np.matmul(g[:, band], ut[:, :, part])
            flips += block_sweep(ht, gut, ut, g, j0, part.start, alpha, inv_temp, hard)
    return flips


@nb.njit(inline="always", cache=True, fastmath=FMA)
def _add_changes(gj, dt, grow, j, nr):
    """gj[:nr] += Σ_{k<j} grow[k] · dt[k, :nr]: the changes of the band's earlier entries, four rows of dt
    per pass over gj (its loads and stores, not the arithmetic, bound this loop). The last pass may read
    up to three rows at or after j, with weight 0: stale but finite changes of another tile, or the three
    zero rows kept past the band."""
    for k in range(0, j, 4):
        c0 = grow[k]
        c1 = grow[k + 1] if k + 1 < j else np.float32(0.0)
        c2 = grow[k + 2] if k + 2 < j else np.float32(0.0)
        c3 = grow[k + 3] if k + 3 < j else np.float32(0.0)
        d0, d1, d2, d3 = dt[k, :nr], dt[k + 1, :nr], dt[k + 2, :nr], dt[k + 3, :nr]
        for r in range(nr):
            gj[r] += (d0[r] * c0 + d1[r] * c1) + (d2[r] * c2 + d3[r] * c3)


# error_model="numpy": no zero-division check in fast_tanh, which would keep the row loops scalar.
@nb.njit(cache=True, nogil=True, error_model="numpy", fastmath=FMA)
def block_sweep(ht, gut, ut, g, j0, r_start, alpha, inv_temp, hard):
    """The entries j0 .. j0 + w of U, in order, for the rows of one chunk, given the fields from outside.

    float32, entry-major: ht (B, l, R) h = X V of the chunk's R rows; gut (B, w, R) the band's G U with
    its old values (overwritten); ut (B, l, m) the state, rows r_start .. r_start + R updated in place;
    g (B, l, l). Every array is C-contiguous and indexed with offsets (views would make numba's loops
    strided, hence scalar). TILE rows go in lockstep, one vector lane each. Returns the sign changes of a
    hard pass (0 when soft).
    """
    nbatch, width, rows = gut.shape
    dt = np.zeros((width + 3, TILE), np.float32)  # the changes of the band's entries so far (3 zero pad rows)
    flips = 0
    for b in range(nbatch):
        a = alpha[b]
        beta = inv_temp[b]
        two_a = np.float32(2.0) * a
        for r0 in range(0, rows, TILE):
            nr = min(TILE, rows - r0)
            c0 = r_start + r0
            for j in range(width):
                e = j0 + j
                uj, gj, hj, dj = ut[b, e, c0:c0 + nr], gut[b, j, r0:r0 + nr], ht[b, e, r0:r0 + nr], dt[j, :nr]
                _add_changes(gj, dt, g[b, e, j0:j0 + width], j, nr)
                gjj = g[b, e, e]
                if hard:
                    for r in range(nr):
                        o = uj[r]
                        f = two_a * (hj[r] - a * (gj[r] - gjj * o))
                        nv = np.float32(f > 0) - np.float32(f < 0)
                        nv = o if f == 0 else nv
                        flips += (nv > 0) != (o > 0)
                        dj[r] = nv - o
                        uj[r] = nv
                else:
                    for r in range(nr):
                        o = uj[r]
                        nv = fast_tanh(two_a * (hj[r] - a * (gj[r] - gjj * o)) * beta)
                        dj[r] = nv - o
                        uj[r] = nv
    return flips


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
