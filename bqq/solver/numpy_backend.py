"""The CPU backend of the BQQ solver: numpy arrays, the numba sweeps of :mod:`bqq_kernels.cpu`, BLAS GEMMs.

Factors are kept row-major with the inner dimension last, U (B, m, l) and V (B, n, l), so that the
unweighted V phase is the U phase of Xᵀ. Everything is deterministic and independent of the thread count
and of batching (see :mod:`bqq_kernels.cpu.binary_factorization`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from bqq_kernels.cpu import coupled_row_sweep, gram, row_sweep, spectral_norm

from .settings import POWER_ITERATIONS


@dataclass
class Problem:
    """A batch being solved: float32 centered X (B, m, n) and its transpose, X H (X when unweighted),
    H in float32 for the sweeps and in float64 for the fits (None when unweighted)."""

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
        # numba's threads run the sweeps; BLAS threads spinning beside them made each sweep ~5x slower.
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
        xh = xc if hm is None else np.matmul(xc, hm)
        return Problem(xc, xt, xh, hm, hessian)

    def scale_stats(self, prob: Problem) -> tuple[np.ndarray, np.ndarray]:
        """rms(X) and σ_max(X H) per problem, float64 (B,)."""
        rms = np.sqrt((prob.xc.astype(np.float64) ** 2).mean(axis=(1, 2)))
        return rms, spectral_norm(prob.xh.astype(np.float64), POWER_ITERATIONS)

    def factors(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return u, v

    def factors_of(self, u: np.ndarray) -> np.ndarray:
        """The state for ±1 factors (B, rows, l) given by a caller."""
        return np.asarray(u)

    def anneal(self, prob: Problem, u: np.ndarray, v: np.ndarray, alpha: np.ndarray, inv_u: np.ndarray,
               inv_v: np.ndarray) -> None:
        """Soft sweeps, one per row of the (k, B) inverse temperatures."""
        for iu, iv in zip(inv_u, inv_v, strict=True):
            self.sweep(prob, u, v, alpha, iu, iv, hard=False)

    def sweep(self, prob: Problem, u: np.ndarray, v: np.ndarray, alpha: np.ndarray, inv_temp_u: np.ndarray,
              inv_temp_v: np.ndarray, hard: bool) -> int:
        """A U phase then a V phase; returns the sign changes."""
        if prob.hm is None:
            return (_half_sweep(prob.xc, u, v, alpha, inv_temp_u, hard)
                    + _half_sweep(prob.xt, v, u, alpha, inv_temp_v, hard))
        hv = np.matmul(prob.hm, v)
        g = np.matmul(v.transpose(0, 2, 1), hv)  # Vᵀ H V (its diagonal cancels in the field)
        flips = row_sweep(np.matmul(prob.xh, v), np.matmul(u, g), u, g, alpha, inv_temp_u, hard)
        k = gram(u)
        p = np.matmul(prob.xh.transpose(0, 2, 1), u)  # H Xᵀ U
        return flips + coupled_row_sweep(p, np.matmul(v, k), v, k, prob.hm, alpha, inv_temp_v, hard)

    def signs(self, a: np.ndarray) -> np.ndarray:
        return np.where(a >= 0, 1.0, -1.0).astype(np.float32)

    def fit_terms(self, xc: np.ndarray, u: np.ndarray, v: np.ndarray, hessian: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """<X, UVᵀ>_H and <UVᵀ, UVᵀ>_H per problem (float64), where <A, B>_H = tr(A H Bᵀ)."""
        prod = np.matmul(u.astype(np.float64), v.astype(np.float64).transpose(0, 2, 1))  # exact integers
        weighted = prod if hessian is None else np.matmul(prod, hessian)
        return (xc * weighted).sum(axis=(1, 2)), (prod * weighted).sum(axis=(1, 2))

    def weighted_square(self, xc: np.ndarray, hessian: np.ndarray | None) -> np.ndarray:
        """<X, X>_H per problem (float64)."""
        xw = xc if hessian is None else np.matmul(xc, hessian)
        return (xc * xw).sum(axis=(1, 2))

    def sign_bits(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Y = (U > 0) (G, m, l) and Z = (Vᵀ > 0) (G, l, n), uint8."""
        return (u > 0).astype(np.uint8), np.ascontiguousarray((v > 0).astype(np.uint8).transpose(0, 2, 1))

    def int8(self, u: np.ndarray) -> np.ndarray:
        return u.astype(np.int8)

    # --- the refit -----------------------------------------------------------------------------
    def refit(self, targets: np.ndarray, ys: np.ndarray, zs: np.ndarray, hessian: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`refit_scalars` per group: float32 scales (G, p, 3) and offsets (G,)."""
        fits = [refit_scalars(t, y, z, hessian) for t, y, z in zip(targets, ys, zs, strict=True)]
        return (np.stack([c.astype(np.float32) for c, _ in fits]).reshape(len(fits), -1, 3),
                np.array([u for _, u in fits], np.float32))


def _half_sweep(x: np.ndarray, u: np.ndarray, v: np.ndarray, alpha: np.ndarray, inv_temp: np.ndarray,
                hard: bool) -> int:
    """Update every entry of u (B, m, l) given v (B, n, l) and x (B, m, n); returns sign changes."""
    g = gram(v)
    return row_sweep(np.matmul(x, v), np.matmul(u, g), u, g, alpha, inv_temp, hard)


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
