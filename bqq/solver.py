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

Output-aware (calibrated) solving replaces ‖E‖² by tr(E H Eᵀ), H = Σ x xᵀ over the layer's inputs (the
group's columns): the U phase stays row-separable with h = X H V and G = Vᵀ H V, the V phase couples
its rows through H (:func:`bqq_kernels.cpu.coupled_row_sweep`), T_c = 2 α σ_max(X H), the polish refits α
under H and the refit solves the H-weighted normal equations. H = None is the plain Frobenius objective.
A matrix cut into several column groups is solved column block by column block, each under its Schur
complement of H, its error carried onto the later columns (:func:`column_blocks`), so the cross-block
terms of H count.

Everything is batched over same-shape groups; randomness comes from one SeedSequence per
(seed, stack, group, restart), so results do not depend on batching or thread count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from bqq_kernels.cpu import coupled_row_sweep, gram, row_sweep, spectral_norm

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
    hessian: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sign factors of a batch of residuals.

    Args:
        x: (B, m, n) float64 residuals (the mean is removed here).
        rank: inner dimension l.
        seeds: B integer sequences, one per problem, seeding its start.
        hessian: None, or (B, n, n) symmetric positive definite weights H of the objective
            tr((X - Xhat) H (X - Xhat)ᵀ) (see :func:`prepare_hessian`).

    Returns:
        U (B, m, l) and V (B, n, l) as int8 in {-1, +1}, with X ≈ α U Vᵀ + row/col/const terms.
    """
    # numba's threads run the sweeps; BLAS threads spinning beside them made each sweep ~5x slower.
    with threadpool_limits(limits=1, user_api="blas"):
        return _solve(x, rank, seeds, sweeps, t_start, t_end, alpha_scale, polish_rounds, aspect_exponent, hessian)


def _solve(x, rank, seeds, sweeps, t_start, t_end, alpha_scale, polish_rounds, aspect_exponent, hessian):
    nbatch, m, n = x.shape
    weighted = hessian is not None
    xc = _center(x, hessian).astype(np.float32)
    hm = hessian.astype(np.float32) if weighted else None
    # Unweighted, the V phase is the U phase of Xᵀ; weighted, both phases use X H (fixed for the stack).
    xt = np.ascontiguousarray(xc.transpose(0, 2, 1))
    xh = np.matmul(xc, hm) if weighted else xc
    u = np.empty((nbatch, m, rank), np.float32)
    v = np.empty((nbatch, n, rank), np.float32)
    for b, seq in enumerate(seeds):
        rng = np.random.default_rng(np.random.SeedSequence(list(seq)))
        u[b] = rng.uniform(-0.01, 0.01, (m, rank))
        v[b] = rng.uniform(-0.01, 0.01, (n, rank))

    rms = np.sqrt((xc.astype(np.float64) ** 2).mean(axis=(1, 2)))
    alpha = (alpha_scale * rms / np.sqrt(rank)).astype(np.float32)
    t_crit = 2.0 * alpha * spectral_norm(xh.astype(np.float64), POWER_ITERATIONS)
    # The U side of a wide matrix sees larger fields (sums over n > m columns) and freezes first; a
    # temperature ratio T_U / T_V = (n/m)^(2·aspect_exponent) keeps the product, hence T_c, unchanged
    # while balancing the sides (0.7 is empirical: 384×1536 MSE 0.363 -> 0.328 at equal sweeps).
    aspect = np.float32((n / m) ** aspect_exponent)
    live = t_crit > 0  # a constant residual needs no binaries: leave its signs at +1
    for k in range(sweeps):
        frac = k / max(sweeps - 1, 1)
        temp = t_crit * t_start * (t_end / t_start) ** frac
        inv_temp = np.where(live, 1.0 / np.where(live, temp, 1.0), 0.0).astype(np.float32)
        _sweep(xc, xt, xh, hm, u, v, alpha, inv_temp / aspect, inv_temp * aspect, False)

    u = np.where(u >= 0, 1.0, -1.0).astype(np.float32)
    v = np.where(v >= 0, 1.0, -1.0).astype(np.float32)
    zero = np.zeros(nbatch, np.float32)
    for _ in range(polish_rounds):
        alpha = _fit_alpha(xc, u, v, hessian)
        if _sweep(xc, xt, xh, hm, u, v, alpha, zero, zero, True) == 0:
            break
    return u.astype(np.int8), v.astype(np.int8)


def _sweep(xc, xt, xh, hm, u, v, alpha, inv_temp_u, inv_temp_v, hard: bool) -> int:
    """A U phase then a V phase; returns the sign changes. ``hm`` None: the unweighted objective."""
    if hm is None:
        return _half_sweep(xc, u, v, alpha, inv_temp_u, hard) + _half_sweep(xt, v, u, alpha, inv_temp_v, hard)
    hv = np.matmul(hm, v)
    g = np.matmul(v.transpose(0, 2, 1), hv)  # Vᵀ H V (its diagonal cancels in the field)
    flips = row_sweep(np.matmul(xh, v), np.matmul(u, g), u, g, alpha, inv_temp_u, hard)
    k = gram(u)
    p = np.matmul(xh.transpose(0, 2, 1), u)  # H Xᵀ U
    return flips + coupled_row_sweep(p, np.matmul(v, k), v, k, hm, alpha, inv_temp_v, hard)


def _half_sweep(x: np.ndarray, u: np.ndarray, v: np.ndarray, alpha: np.ndarray, inv_temp: np.ndarray,
                hard: bool) -> int:
    """Update every entry of u (B, m, l) given v (B, n, l) and x (B, m, n); returns sign changes."""
    g = gram(v)
    return row_sweep(np.matmul(x, v), np.matmul(u, g), u, g, alpha, inv_temp, hard)


def _center(x: np.ndarray, hessian: np.ndarray | None) -> np.ndarray:
    """x minus its best constant under the objective (the mean; 1ᵀX H 1 / (m 1ᵀH 1) under H)."""
    if hessian is None:
        return x - x.mean(axis=(1, 2), keepdims=True)
    h1 = hessian.sum(axis=2)  # (B, n): H 1
    shift = (x.sum(axis=1) * h1).sum(axis=1) / (x.shape[1] * h1.sum(axis=1))
    return x - shift[:, None, None]


def _fit_terms(xc: np.ndarray, u: np.ndarray, v: np.ndarray, hessian: np.ndarray | None):
    """<X, UVᵀ>_H and <UVᵀ, UVᵀ>_H per problem (float64), where <A, B>_H = tr(A H Bᵀ)."""
    prod = np.matmul(u.astype(np.float64), v.astype(np.float64).transpose(0, 2, 1))  # exact integers
    weighted = prod if hessian is None else np.matmul(prod, hessian)
    return (xc * weighted).sum(axis=(1, 2)), (prod * weighted).sum(axis=(1, 2))


def _fit_alpha(xc: np.ndarray, u: np.ndarray, v: np.ndarray, hessian: np.ndarray | None = None) -> np.ndarray:
    """Least-squares α of X ≈ α U Vᵀ per problem (α = 0 for an all-zero problem)."""
    num, den = _fit_terms(xc, u, v, hessian)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0).astype(np.float32)


def sign_fit_error(x: np.ndarray, u: np.ndarray, v: np.ndarray, hessian: np.ndarray | None = None) -> np.ndarray:
    """Error of the best α·U Vᵀ + constant fit per problem, under H if given (picks among restarts)."""
    xc = _center(x, hessian)
    num, den = _fit_terms(xc, u, v, hessian)
    xw = xc if hessian is None else np.matmul(xc, hessian)
    return (xc * xw).sum(axis=(1, 2)) - np.where(den > 0, num * num / np.where(den > 0, den, 1.0), 0.0)


def prepare_hessian(h: np.ndarray) -> np.ndarray:
    """H (n, n) made solver-ready: symmetric and scaled to mean diagonal 1 (the objective's minimizers
    do not change; float32 sums stay in range; a method's ``damping`` is then a fraction of the mean).

    Raises ValueError for a non-square, non-finite or all-zero H.
    """
    h = np.asarray(h, np.float64)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise ValueError(f"hessian must be a square matrix, got shape {h.shape}")
    if not np.isfinite(h).all():
        raise ValueError("hessian contains NaN or Inf")
    h = (h + h.T) / 2
    mean_diag = float(np.trace(h)) / h.shape[0]
    if not mean_diag > 0:
        raise ValueError("hessian has no positive diagonal: the layer saw no (non-zero) inputs")
    return h / mean_diag


def damped(h: np.ndarray, damping: float) -> np.ndarray:
    """h + damping · I, for an H from :func:`prepare_hessian` (mean diagonal 1): what a method solves
    under. Damping keeps inputs the calibration data rarely excites from being free to absorb error."""
    return h + damping * np.eye(h.shape[0])


def clipped_channels(h: np.ndarray, clip: float) -> np.ndarray:
    """H with every input channel's scale capped: channel i is scaled by min(1, sqrt(clip · median(diag)
    / H_ii)) on both sides, so no channel weighs more than ``clip`` times the median one; then scaled to
    mean diagonal 1.

    Why: transformers carry "massive activations", a few input channels hundreds of times larger than
    the rest (MiniLM layer 0's FFN output: one channel at 636× the median). The raw objective then
    spends a whole BQQ group's few scalars and shared binaries on reproducing those channels exactly
    and sacrifices all others; the output error under H falls while the model breaks (MiniLM sentence
    embeddings: cosine 0.77 with that one layer quantized, against 0.98 data-free and 0.99 with the
    cap at 3).
    """
    diag = np.clip(np.diag(h), 0.0, None)
    cap = clip * float(np.median(diag))
    if cap > 0:
        scale = np.sqrt(np.minimum(1.0, cap / np.where(diag > 0, diag, cap)))
        h = h * scale[:, None] * scale[None, :]
    return h / (float(np.trace(h)) / h.shape[0])


def column_blocks(h: np.ndarray, col_sizes: Sequence[int]) -> list[tuple[slice, np.ndarray, np.ndarray | None]]:
    """Split the objective tr(E H Eᵀ) over column blocks solved one after another.

    With E = W - Ŵ in column blocks E_1 … E_C, block k is solved under S_k (the Schur complement of
    the later blocks in H restricted to blocks >= k) on a target that carries the earlier blocks'
    errors: after block k, W[:, later] += E_k F_k with F_k = H[k, later] H[later, later]⁻¹ (the best
    continuous correction of the later columns). Then tr(E H Eᵀ) = Σ_k tr(E_k S_k E_kᵀ) exactly, with
    each E_k taken against its carried target. Solving every block under its own diagonal block
    H[k, k] instead drops the cross-block terms (GPTQ is the one-column case of this scheme).

    From one Cholesky factor U of H⁻¹ = Uᵀ U (upper): S_k = U_kk⁻¹ U_kk⁻ᵀ and F_k = -U_kk⁻¹ U_k,later.

    Args:
        h: (n, n) symmetric positive definite (damped) H.
        col_sizes: the block widths, summing to n.

    Returns:
        (column slice, S_k (n_k, n_k), F_k (n_k, n - end_k) or None for the last block) per block. One
        block returns H itself.
    """
    if len(col_sizes) == 1:
        return [(slice(0, h.shape[0]), h, None)]
    upper = np.linalg.cholesky(np.linalg.inv(h)).T
    out, start = [], 0
    for size in col_sizes:
        stop = start + size
        inv_diag = np.linalg.inv(upper[start:stop, start:stop])  # U_kk⁻¹ (upper triangular)
        schur = inv_diag @ inv_diag.T
        carry = -inv_diag @ upper[start:stop, stop:] if stop < h.shape[0] else None
        out.append((slice(start, stop), (schur + schur.T) / 2, carry))
        start = stop
    return out


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
