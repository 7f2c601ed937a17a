"""The BQQ solver: one binary stack per group by mean-field annealing, then exact scalar refits.

One stack approximates a group residual R (m, n) by r·Y Z + s·Y 1 + t·1 Z + u with Y ∈ {0,1}^{m×l},
Z ∈ {0,1}^{l×n}. With Y = (U + 1)/2 and Z = (Vᵀ + 1)/2 this family equals α·U Vᵀ plus row, column and
constant terms, so the binary search runs in the ±1 form on the centered residual X = R - mean(R):

    min over U ∈ {±1}^{m×l}, V ∈ {±1}^{n×l} of ‖X - α U Vᵀ‖²

1. Mean-field annealing (Gauss-Seidel): magnetizations μ_U, μ_V ∈ [-1, 1], started near 0, are
   updated entry by entry to tanh(local field / T) (:func:`bqq_kernels.cpu.row_sweep`), alternating U and
   V, while T falls geometrically from ``t_start`` to ``t_end`` times the critical temperature
   T_c = 2 α σ_max(X) of the linearized update. α is held at ``alpha_scale``·sqrt(mean(X²)/l).
2. Polish: signs of the magnetizations, then exact bit-flip descent (T = 0) with α refitted, until no
   entry flips.
3. :func:`refit_scalars`: exact least squares of all 3p + 1 scalars of a group on its binaries.

Everything is batched over same-shape groups; randomness comes from one SeedSequence per
(seed, stack, group, restart), so results do not depend on batching or thread count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from bqq_kernels.cpu import gram, row_sweep, spectral_norm

POWER_ITERATIONS = 30


def solve_sign_factors(
    x: np.ndarray,
    rank: int,
    seeds: Sequence[Sequence[int]],
    *,
    sweeps: int,
    t_start: float,
    t_end: float,
    alpha_scale: float,
    polish_rounds: int,
    aspect_exponent: float = 0.7,
) -> tuple[np.ndarray, np.ndarray]:
    """Sign factors of a batch of residuals.

    Args:
        x: (B, m, n) float64 residuals (the mean is removed here).
        rank: inner dimension l.
        seeds: B integer sequences, one per problem, seeding its start.

    Returns:
        U (B, m, l) and V (B, n, l) as int8 in {-1, +1}, with X ≈ α U Vᵀ + row/col/const terms.
    """
    # numba's threads run the sweeps; BLAS threads spinning beside them made each sweep ~5x slower.
    with threadpool_limits(limits=1, user_api="blas"):
        return _solve(x, rank, seeds, sweeps, t_start, t_end, alpha_scale, polish_rounds, aspect_exponent)


def _solve(x, rank, seeds, sweeps, t_start, t_end, alpha_scale, polish_rounds, aspect_exponent):
    nbatch, m, n = x.shape
    xc = (x - x.mean(axis=(1, 2), keepdims=True)).astype(np.float32)
    xt = np.ascontiguousarray(xc.transpose(0, 2, 1))
    u = np.empty((nbatch, m, rank), np.float32)
    v = np.empty((nbatch, n, rank), np.float32)
    for b, seq in enumerate(seeds):
        rng = np.random.default_rng(np.random.SeedSequence(list(seq)))
        u[b] = rng.uniform(-0.01, 0.01, (m, rank))
        v[b] = rng.uniform(-0.01, 0.01, (n, rank))

    rms = np.sqrt((xc.astype(np.float64) ** 2).mean(axis=(1, 2)))
    alpha = (alpha_scale * rms / np.sqrt(rank)).astype(np.float32)
    t_crit = 2.0 * alpha * spectral_norm(xc.astype(np.float64), POWER_ITERATIONS)
    # The U side of a wide matrix sees larger fields (sums over n > m columns) and freezes first; a
    # temperature ratio T_U / T_V = (n/m)^(2·aspect_exponent) keeps the product, hence T_c, unchanged
    # while balancing the sides (0.7 is empirical: 384×1536 MSE 0.363 -> 0.328 at equal sweeps).
    aspect = np.float32((n / m) ** aspect_exponent)
    live = t_crit > 0  # a constant residual needs no binaries: leave its signs at +1
    for k in range(sweeps):
        frac = k / max(sweeps - 1, 1)
        temp = t_crit * t_start * (t_end / t_start) ** frac
        inv_temp = np.where(live, 1.0 / np.where(live, temp, 1.0), 0.0).astype(np.float32)
        _half_sweep(xc, u, v, alpha, inv_temp / aspect, False)
        _half_sweep(xt, v, u, alpha, inv_temp * aspect, False)

    u = np.where(u >= 0, 1.0, -1.0).astype(np.float32)
    v = np.where(v >= 0, 1.0, -1.0).astype(np.float32)
    zero = np.zeros(nbatch, np.float32)
    for _ in range(polish_rounds):
        alpha = _fit_alpha(xc, u, v)
        flips = _half_sweep(xc, u, v, alpha, zero, True)
        flips += _half_sweep(xt, v, u, alpha, zero, True)
        if flips == 0:
            break
    return u.astype(np.int8), v.astype(np.int8)


def _half_sweep(x: np.ndarray, u: np.ndarray, v: np.ndarray, alpha: np.ndarray, inv_temp: np.ndarray,
                hard: bool) -> int:
    """Update every entry of u (B, m, l) given v (B, n, l) and x (B, m, n); returns sign changes."""
    g = gram(v)
    return row_sweep(np.matmul(x, v), np.matmul(u, g), u, g, alpha, inv_temp, hard)


def _fit_alpha(xc: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Least-squares α of X ≈ α U Vᵀ per problem (α = 0 for an all-zero problem)."""
    prod = np.matmul(u.astype(np.float64), v.astype(np.float64).transpose(0, 2, 1))  # exact integers
    num = (xc * prod).sum(axis=(1, 2))
    den = (prod * prod).sum(axis=(1, 2))
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0).astype(np.float32)


def sign_fit_error(x: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Squared error of the best α·U Vᵀ + mean fit, per problem (used to pick among restarts)."""
    xc = x - x.mean(axis=(1, 2), keepdims=True)
    prod = np.matmul(u.astype(np.float64), v.astype(np.float64).transpose(0, 2, 1))
    num = (xc * prod).sum(axis=(1, 2))
    den = (prod * prod).sum(axis=(1, 2))
    return (xc * xc).sum(axis=(1, 2)) - np.where(den > 0, num * num / np.where(den > 0, den, 1.0), 0.0)


def refit_scalars(w: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> tuple[np.ndarray, float]:
    """Exact least squares of all scalars of one group given its binaries.

    Minimizes ‖w - Σ_i (r_i Y_i Z_i + s_i Y_i 1 + t_i 1 Z_i) - u‖² over (r_i, s_i, t_i) and u.

    Args:
        w: (m, n) float64 target.
        ys: (p, m, l) {0,1}; zs: (p, l, n) {0,1}.

    Returns:
        scales (p, 3) float64 rows (r, s, t), and the offset u. Degenerate designs (e.g. an all-ones
        Y) get the minimum-norm solution.
    """
    m, n = w.shape
    feats: list[tuple[str, np.ndarray | None]] = []
    for y, z in zip(ys.astype(np.float64), zs.astype(np.float64), strict=True):
        feats += [("full", y @ z), ("row", y.sum(axis=1)), ("col", z.sum(axis=0))]
    feats.append(("const", None))
    k = len(feats)
    gram_m = np.empty((k, k))
    for i in range(k):
        for j in range(i, k):
            gram_m[i, j] = gram_m[j, i] = _inner(feats[i], feats[j], m, n)
    target = ("full", w)
    rhs = np.array([_inner(f, target, m, n) for f in feats])
    coef = np.linalg.lstsq(gram_m, rhs, rcond=None)[0]
    return coef[:-1].reshape(-1, 3), float(coef[-1])


def _inner(f: tuple[str, np.ndarray | None], g: tuple[str, np.ndarray | None], m: int, n: int) -> float:
    """Frobenius inner product of two structured (m, n) matrices.

    Kinds: "full" (an m×n array), "row" (a_r broadcast over columns), "col" (b_c broadcast over rows),
    "const" (all ones).
    """
    order = {"full": 0, "row": 1, "col": 2, "const": 3}
    (kf, a), (kg, b) = sorted((f, g), key=lambda t: order[t[0]])
    if kf == "full":
        if kg == "full":
            return float((a * b).sum())
        if kg == "row":
            return float((a.sum(axis=1) * b).sum())
        if kg == "col":
            return float((a.sum(axis=0) * b).sum())
        return float(a.sum())
    if kf == "row":
        if kg == "row":
            return float(n * (a * b).sum())
        if kg == "col":
            return float(a.sum() * b.sum())
        return float(n * a.sum())
    if kf == "col":
        if kg == "col":
            return float(m * (a * b).sum())
        return float(m * a.sum())
    return float(m * n)
