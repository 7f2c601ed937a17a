"""The CPU backend of the BQQ solver: numpy arrays, the numba sweeps of :mod:`bqq_kernels.cpu`, BLAS GEMMs.

Factors are kept entry-major, Uᵀ (B, l, m) and Vᵀ (B, l, n) (as on the torch backend), so that a row
phase updates many rows of one entry with one vector instruction, and the unweighted V phase is the U
phase of Xᵀ. Everything is deterministic and independent of the thread count and of batching (see
:mod:`bqq_kernels.cpu.binary_factorization`).
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
from dataclasses import dataclass

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from bqq_kernels.cpu import coupled_row_sweep, gram_blocks, row_phase, spectral_norm
from bqq_kernels.cpu.binary_factorization import BLOCK, ROW_CHUNK, gram_band

from .settings import POWER_ITERATIONS


@dataclass
class Problem:
    """A batch being solved: float32 centered X (B, m, n) and its transpose, (X H)ᵀ = H Xᵀ (B, n, m) (Xᵀ
    when unweighted), H in float32 for the sweeps and in float64 for the fits (None when unweighted)."""

    xc: np.ndarray
    xt: np.ndarray
    xh: np.ndarray
    hm: np.ndarray | None
    hessian: np.ndarray | None


class NumpyBackend:
    """The solver's operations on numpy arrays (see :mod:`bqq.solver.anneal` for their use)."""

    name = "cpu"
    code_dtypes = (np.uint8, np.uint8, np.float32, np.float32)  # GroupCodes' ys, zs, scales, offset

    def __init__(self, batch_groups: int = 64) -> None:
        self.batch_groups = batch_groups

    def context(self) -> threadpool_limits:
        # numba's threads run the sweeps; BLAS threads spinning beside them slow every sweep badly
        # (bqq.quantized.QuantizedMatrix.single_threaded_blas says why).
        return threadpool_limits(limits=1, user_api="blas")

    # --- sizes and conversions -------------------------------------------------------------------
    def batches(self, count: int, shape: tuple[int, int], rank: int, stacks: int, restarts: int,
                weighted: bool = False) -> tuple[int, int]:
        """(groups handed to the stack loop at once, groups per solve): all of them, ``batch_groups``."""
        return max(count, 1), self.batch_groups

    def asarray(self, a: np.ndarray, dtype: type = np.float64) -> np.ndarray:
        return np.asarray(a, dtype)

    def repeat(self, x: np.ndarray, count: int) -> np.ndarray:
        return np.repeat(x, count, axis=0)

    def broadcast(self, h: np.ndarray, count: int) -> np.ndarray:
        return np.ascontiguousarray(np.broadcast_to(h, (count, *h.shape)))

    def take(self, a: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return a[idx]

    def cat(self, arrays: list[np.ndarray], axis: int = 0) -> np.ndarray:
        return np.concatenate(arrays, axis=axis)

    def empty_codes(self, count: int, shape: tuple[int, int], rank: int) -> tuple[np.ndarray, ...]:
        m, n = shape
        return (np.zeros((count, 0, m, rank), np.uint8), np.zeros((count, 0, rank, n), np.uint8),
                np.zeros((count, 0, 3), np.float32), np.zeros(count, np.float32))

    # --- one stack ------------------------------------------------------------------------------
    def center(self, x: np.ndarray, hessian: np.ndarray | None) -> np.ndarray:
        """x minus its best constant under the objective (the mean; 1ᵀX H 1 / (m 1ᵀH 1) under H)."""
        if hessian is None:
            return x - x.mean(axis=(1, 2), keepdims=True)
        h1 = hessian.sum(axis=2)  # (B, n): H 1
        shift = (x.sum(axis=1) * h1).sum(axis=1) / (x.shape[1] * h1.sum(axis=1))
        return x - shift[:, None, None]

    def problem(self, x: np.ndarray, hessian: np.ndarray | None) -> Problem:
        xc = self.center(x, hessian).astype(np.float32)
        hm = None if hessian is None else hessian.astype(np.float32)
        # Unweighted, the V phase is the U phase of Xᵀ; weighted, both phases use X H (fixed for the stack).
        xt = np.ascontiguousarray(xc.transpose(0, 2, 1))
        xh = xt if hm is None else np.matmul(hm, xt)
        return Problem(xc, xt, xh, hm, hessian)

    def scale_stats(self, prob: Problem) -> tuple[np.ndarray, np.ndarray]:
        """rms(X) and σ_max(X H) per problem, float64 (B,)."""
        rms = np.sqrt((prob.xc.astype(np.float64) ** 2).mean(axis=(1, 2)))
        return rms, spectral_norm(prob.xh.astype(np.float64), POWER_ITERATIONS)  # σ_max((X H)ᵀ) = σ_max(X H)

    def factors(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The starts U (B, m, l), V (B, n, l) as the entry-major state Uᵀ, Vᵀ."""
        return self.factors_of(u), self.factors_of(v)

    def factors_of(self, u: np.ndarray) -> np.ndarray:
        """The entry-major state (B, l, rows) for factors (B, rows, l) given by a caller."""
        return np.ascontiguousarray(np.asarray(u, np.float32).transpose(0, 2, 1))

    def anneal(self, prob: Problem, u: np.ndarray, v: np.ndarray, alpha: np.ndarray, inv_u: np.ndarray,
               inv_v: np.ndarray) -> None:
        """Soft sweeps, one per row of the (k, B) inverse temperatures."""
        self._sweeps(prob, u, v, alpha, inv_u, inv_v, hard=False)

    def sweep(self, prob: Problem, u: np.ndarray, v: np.ndarray, alpha: np.ndarray, inv_temp_u: np.ndarray,
              inv_temp_v: np.ndarray, hard: bool) -> int:
        """A U phase then a V phase; returns the sign changes (counted in hard sweeps only)."""
        return self._sweeps(prob, u, v, alpha, inv_temp_u[None], inv_temp_v[None], hard)

    def _sweeps(self, prob: Problem, u: np.ndarray, v: np.ndarray, alpha: np.ndarray, inv_u: np.ndarray,
                inv_v: np.ndarray, hard: bool) -> int:
        """Sweeps over the batch on :func:`sweep_threads` threads; the same codes for any thread count.

        Many problems: each thread takes a fixed share of them through every sweep (no synchronization).
        Few problems: each phase is split into row chunks over the threads, joined before the next phase.
        """
        nbatch, threads = u.shape[0], sweep_threads()
        tasks = nbatch * -(-max(u.shape[2], v.shape[2]) // ROW_CHUNK)
        pool = cf.ThreadPoolExecutor(threads, thread_name_prefix="bqq-sweep") if threads > 1 and tasks > 1 else None
        try:
            if prob.hm is None and pool is None:
                return _plain_sweeps(prob, u, v, alpha, inv_u, inv_v, hard, slice(0, nbatch))
            if pool is not None and nbatch >= 2 * threads:
                bounds = np.linspace(0, nbatch, threads + 1).round().astype(int)
                shares = [slice(lo, hi) for lo, hi in itertools.pairwise(bounds)]
                sweeps = _plain_sweeps if prob.hm is None else _weighted_sweeps
                return sum(pool.map(lambda p: sweeps(prob, u, v, alpha, inv_u, inv_v, hard, p), shares))
            flips = 0
            for iu, iv in zip(inv_u, inv_v, strict=True):
                if prob.hm is None:
                    flips += _split_phase(pool, prob.xt, u, v, alpha, iu, hard)
                    flips += _split_phase(pool, prob.xc, v, u, alpha, iv, hard)
                else:
                    flips += _weighted_sweep(pool, prob, u, v, alpha, iu, iv, hard)
            return flips
        finally:
            if pool is not None:
                pool.shutdown()

    def signs(self, a: np.ndarray) -> np.ndarray:
        return np.where(a >= 0, 1.0, -1.0).astype(np.float32)

    def copy(self, a: np.ndarray) -> np.ndarray:
        return a.copy()

    def changed(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        return (before != after).reshape(len(before), -1).sum(axis=1)

    def put(self, a: np.ndarray, idx: np.ndarray, values: np.ndarray) -> None:
        a[idx] = values

    def fit_terms(self, xc: np.ndarray, ut: np.ndarray, vt: np.ndarray, hessian: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """<X, UVᵀ>_H and <UVᵀ, UVᵀ>_H per problem (float64), where <A, B>_H = tr(A H Bᵀ).

        Unweighted, without forming U Vᵀ: <X, UVᵀ> = Σ (Vᵀ Xᵀ) ∘ Uᵀ in the precision of ``xc`` (float32 for
        the polish's α, float64 to compare restarts), and ‖UVᵀ‖² = Σ (UᵀU) ∘ (VᵀV) from float32 GEMMs (the
        Gram matrices of ±1 factors are exact integers)."""
        if hessian is None:
            xv = np.matmul(vt.astype(xc.dtype, copy=False), xc.transpose(0, 2, 1))
            num = (xv.astype(np.float64) * ut).sum(axis=(1, 2))
            den = (gram_blocks(ut).astype(np.float64) * gram_blocks(vt)).sum(axis=(1, 2))
            return num, den
        prod = np.matmul(ut.astype(np.float64).transpose(0, 2, 1), vt.astype(np.float64))  # exact integers
        weighted = np.matmul(prod, hessian)
        return (xc * weighted).sum(axis=(1, 2)), (prod * weighted).sum(axis=(1, 2))

    def weighted_square(self, xc: np.ndarray, hessian: np.ndarray | None) -> np.ndarray:
        """<X, X>_H per problem (float64)."""
        xw = xc if hessian is None else np.matmul(xc, hessian)
        return (xc * xw).sum(axis=(1, 2))

    def sign_bits(self, ut: np.ndarray, vt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Y = (U > 0) (G, m, l) and Z = (Vᵀ > 0) (G, l, n), uint8."""
        return np.ascontiguousarray((ut > 0).astype(np.uint8).transpose(0, 2, 1)), (vt > 0).astype(np.uint8)

    def int8(self, ut: np.ndarray) -> np.ndarray:
        """The state as int8 factors (B, rows, l)."""
        return np.ascontiguousarray(ut.astype(np.int8).transpose(0, 2, 1))

    # --- the refit -----------------------------------------------------------------------------
    def refit(self, targets: np.ndarray, ys: np.ndarray, zs: np.ndarray, hessian: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`refit_scalars` per group: float32 scales (G, p, 3) and offsets (G,)."""
        fits = [refit_scalars(t, y, z, hessian) for t, y, z in zip(targets, ys, zs, strict=True)]
        return (np.stack([c.astype(np.float32) for c, _ in fits]).reshape(len(fits), -1, 3),
                np.array([u for _, u in fits], np.float32))


def sweep_threads() -> int:
    """Threads a CPU solve uses: numba's thread setting for the calling thread (the model pass sets 1 on
    threads that each solve their own groups)."""
    return numba.get_num_threads()


def _plain_sweeps(prob: Problem, u: np.ndarray, v: np.ndarray, alpha: np.ndarray, inv_u: np.ndarray,
                  inv_v: np.ndarray, hard: bool, share: slice) -> int:
    """Every sweep (rows of inv_u, inv_v) for the problems ``share``, on the calling thread."""
    flips = 0
    a = alpha[share]
    for iu, iv in zip(inv_u, inv_v, strict=True):
        flips += row_phase(prob.xt[share], u[share], v[share], gram_blocks(v[share]), a, iu[share], hard)
        flips += row_phase(prob.xc[share], v[share], u[share], gram_blocks(u[share]), a, iv[share], hard)
    return flips


def _weighted_sweeps(prob: Problem, u: np.ndarray, v: np.ndarray, alpha: np.ndarray, inv_u: np.ndarray,
                     inv_v: np.ndarray, hard: bool, share: slice) -> int:
    """Every weighted sweep for the problems ``share``, on the calling thread (as :func:`_plain_sweeps`)."""
    part = Problem(prob.xc[share], prob.xt[share], prob.xh[share], prob.hm[share],
                   None if prob.hessian is None else prob.hessian[share])
    return sum(_weighted_sweep(None, part, u[share], v[share], alpha[share], iu[share], iv[share], hard)
               for iu, iv in zip(inv_u, inv_v, strict=True))


def _split_phase(pool: cf.ThreadPoolExecutor | None, xt: np.ndarray, own: np.ndarray, other: np.ndarray,
                 alpha: np.ndarray, inv_temp: np.ndarray, hard: bool, g: np.ndarray | None = None) -> int:
    """One phase of a few problems spread over ``pool`` (None: this thread): the Gram matrices (unless
    given) by bands of ``BLOCK`` columns, then the rows in chunks of ``ROW_CHUNK``; the same GEMM calls
    either way. Arguments as :func:`row_phase`."""
    if pool is None:
        return row_phase(xt, own, other, gram_blocks(other) if g is None else g, alpha, inv_temp, hard)
    nbatch, l, rows = own.shape
    if g is None:
        g = np.empty((nbatch, l, l), np.float32)
        list(pool.map(lambda j0: gram_band(other, g, j0), range(0, l, BLOCK)))
    tasks = [(slice(b, b + 1), slice(r0, min(r0 + ROW_CHUNK, rows)))
             for b in range(nbatch) for r0 in range(0, rows, ROW_CHUNK)]
    return sum(pool.map(lambda t: row_phase(xt[t[0]], own[t[0]], other[t[0]], g[t[0]], alpha[t[0]],
                                            inv_temp[t[0]], hard, t[1]), tasks))


def _weighted_sweep(pool: cf.ThreadPoolExecutor | None, prob: Problem, ut: np.ndarray, vt: np.ndarray,
                    alpha: np.ndarray, inv_temp_u: np.ndarray, inv_temp_v: np.ndarray, hard: bool) -> int:
    """Under H: the U phase is a row phase of X H with G = Vᵀ H V (its diagonal cancels in the field);
    the V phase, whose rows couple through H, is :func:`coupled_row_sweep` (row-major V)."""
    g = np.matmul(vt, np.matmul(prob.hm, vt.transpose(0, 2, 1)))
    flips = _split_phase(pool, prob.xh, ut, vt, alpha, inv_temp_u, hard, g)
    k = gram_blocks(ut)
    v = np.ascontiguousarray(vt.transpose(0, 2, 1))
    p = np.matmul(prob.xh, ut.transpose(0, 2, 1))  # H Xᵀ U
    flips += coupled_row_sweep(p, np.matmul(v, k), v, k, prob.hm, alpha, inv_temp_v, hard)
    vt[:] = v.transpose(0, 2, 1)
    return flips


def refit_scalars(w: np.ndarray, ys: np.ndarray, zs: np.ndarray, hessian: np.ndarray | None = None
                  ) -> tuple[np.ndarray, float]:
    """Exact least squares of all scalars of one group given its binaries.

    Minimizes ‖E‖² (or tr(E H Eᵀ) with ``hessian``), E = w - Σ_i (r_i Y_i Z_i + s_i Y_i 1 + t_i 1 Z_i) - u,
    over (r_i, s_i, t_i) and u: the 3p + 1 normal equations, solved once.

    Args:
        w: (m, n) float64 target.
        ys: (p, m, l) {0,1}; zs: (p, l, n) {0,1}.
        hessian: None or (n, n) symmetric positive semi-definite H.

    Returns:
        scales (p, 3) float64 rows (r, s, t), and the offset u. Degenerate designs (e.g. an all-ones
        Y) get the minimum-norm solution.
    """
    m, n = w.shape
    ones_m, ones_n = np.ones(m), np.ones(n)
    # Each feature is a full (m, n) matrix or an outer product a bᵀ: the row term (Y_i 1) 1ᵀ, the
    # column term 1 (1ᵀ Z_i) and the constant 1 1ᵀ. Then <F, G>_H = tr(F H Gᵀ) needs F H only for the
    # p full products (p m n² flops), and <a bᵀ, c dᵀ>_H = (a·c)(bᵀ H d).
    feats: list[tuple[np.ndarray, np.ndarray | None]] = []
    for y, z in zip(ys.astype(np.float64), zs.astype(np.float64), strict=True):
        feats += [(y @ z, None), (y.sum(axis=1), ones_n), (ones_m, z.sum(axis=0))]
    feats.append((ones_m, ones_n))
    weigh = (lambda a: a) if hessian is None else (lambda a: a @ hessian)
    weighted = [weigh(a) if b is None else weigh(b) for a, b in feats]  # F H, or H b (H symmetric)

    def inner(i: int, target: tuple[np.ndarray, np.ndarray | None]) -> float:
        (a, b), fw = feats[i], weighted[i]
        c, d = target
        if b is None and d is None:
            return float((fw * c).sum())
        if b is None:  # <F H, c dᵀ> = cᵀ (F H) d
            return float(c @ fw @ d)
        if d is None:  # <a bᵀ H, G> = aᵀ G (H b)
            return float(a @ c @ fw)
        return float((a @ c) * (fw @ d))

    k = len(feats)
    gram_m = np.empty((k, k))
    for i in range(k):
        for j in range(i, k):
            gram_m[i, j] = gram_m[j, i] = inner(i, feats[j])
    rhs = np.array([inner(i, (w, None)) for i in range(k)])
    coef = np.linalg.lstsq(gram_m, rhs, rcond=None)[0]
    return coef[:-1].reshape(-1, 3), float(coef[-1])
