"""The maths of the output-aware objective tr(E H Eᵀ), H = Σ x xᵀ over a layer's inputs: H made
solver-ready, damped and channel-capped, and split over column blocks by Schur complements.

Shared by every solver that minimizes the output error (BQQ on both backends, GPTQ) and by the model pass;
nothing here depends on a device or on the BQQ search.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.linalg import lapack


def prepare_hessian(h: np.ndarray, copy: bool = True) -> np.ndarray:
    """H (n, n) made solver-ready: symmetric and scaled to mean diagonal 1 (the objective's minimizers
    do not change; float32 sums stay in range; a method's ``damping`` is then a fraction of the mean).

    ``copy=False`` prepares a float64 ``h`` in its own memory (no n x n temporary: ~1 GB for an 11008-wide
    layer), for sums the caller owns. Raises ValueError for a non-square, non-finite or all-zero H.
    """
    h = np.asarray(h, np.float64)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise ValueError(f"hessian must be a square matrix, got shape {h.shape}")
    if not np.isfinite(h).all():
        raise ValueError("hessian contains NaN or Inf")
    mean_diag = float(np.trace(h)) / h.shape[0]
    if not mean_diag > 0:
        raise ValueError("hessian has no positive diagonal: the layer saw no (non-zero) inputs")
    h = np.array(h, copy=True) if copy else h
    symmetrize_(h)
    h /= mean_diag
    return h


_BLOCK = 512


def symmetrize_(h: np.ndarray) -> None:
    """h = (h + hᵀ) / 2 in place, a block pair at a time (temporaries of one block, not of n x n)."""
    n = h.shape[0]
    for i in range(0, n, _BLOCK):
        rows = slice(i, i + _BLOCK)
        h[rows, rows] = (h[rows, rows] + h[rows, rows].T) * 0.5
        for j in range(i + _BLOCK, n, _BLOCK):
            cols = slice(j, j + _BLOCK)
            mean = (h[rows, cols] + h[cols, rows].T) * 0.5
            h[rows, cols] = mean
            h[cols, rows] = mean.T


def damped(h: np.ndarray, damping: float, copy: bool = True) -> np.ndarray:
    """h + damping · I, for an H from :func:`prepare_hessian` (mean diagonal 1): what a method solves
    under. Damping keeps inputs the calibration data rarely excites from being free to absorb error.
    ``copy=False`` damps ``h`` itself (no n x n temporary: ~1 GB for an 11008-wide layer)."""
    out = np.array(h, np.float64, copy=True) if copy else h
    out[np.diag_indices_from(out)] += damping
    return out


def _lower_cholesky(a: np.ndarray) -> np.ndarray:
    """The lower Cholesky factor (Fortran-ordered, upper triangle zeroed) of the positive definite matrix
    in the lower triangle of ``a.T`` (all of ``a`` for a symmetric ``a`` (n, n)), in ``a``'s own memory:
    a C-ordered array's transpose is Fortran-ordered, so LAPACK writes there without a copy."""
    factor, info = lapack.dpotrf(a.T, lower=1, clean=1, overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"matrix is not positive definite (LAPACK dpotrf info={info})")
    return factor


def upper_inverse_factor(h: np.ndarray) -> np.ndarray:
    """The upper Cholesky factor U of H⁻¹ = Uᵀ U (GPTQ's form), computed in ``h``'s memory (``h`` (n, n)
    symmetric positive definite float64, overwritten): Cholesky of H, its inverse from the factor, then
    the lower factor L of H⁻¹ = L Lᵀ, so U = Lᵀ; no other n x n array is made."""
    factor = _lower_cholesky(np.ascontiguousarray(h, np.float64))
    inverse, info = lapack.dpotri(factor, lower=1, overwrite_c=1)  # H⁻¹ in the lower triangle
    if info != 0:
        raise np.linalg.LinAlgError(f"matrix is singular (LAPACK dpotri info={info})")
    return _lower_cholesky(inverse.T).T  # .T: the (symmetric) C-ordered view _lower_cholesky expects


def lower_cholesky(a: np.ndarray) -> np.ndarray:
    """The lower Cholesky factor L (Fortran-ordered) of a symmetric positive definite ``a`` (n, n) float64,
    in ``a``'s own memory (``a`` is overwritten), for :func:`solve_with_factor`."""
    return _lower_cholesky(a)


def solve_with_factor(factor: np.ndarray, b: np.ndarray) -> np.ndarray:
    """X with L Lᵀ X = b for ``factor`` = L from :func:`lower_cholesky` and ``b`` (n, k) float64, overwritten
    (a Fortran-ordered ``b``, e.g. the transpose of a C-ordered (k, n), is solved in its own memory)."""
    x, info = lapack.dpotrs(factor, b, lower=1, overwrite_b=1)
    if info != 0:
        raise ValueError(f"LAPACK dpotrs: illegal argument {-info}")
    return x


def solve_positive_definite(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """X with a X = b for symmetric positive definite ``a`` (n, n) and ``b`` (n, k), both float64 and both
    overwritten (Cholesky in place, then :func:`solve_with_factor`)."""
    return solve_with_factor(lower_cholesky(a), b)


def channel_scale(h: np.ndarray, clip: float) -> np.ndarray:
    """(n,) the factor min(1, sqrt(clip · median(diag) / H_ii)) per input channel of ``h`` (n, n) that caps
    every channel's weight at ``clip`` times the median one (all ones when the median is 0)."""
    diag = np.clip(np.diag(h), 0.0, None)
    cap = clip * float(np.median(diag))
    if not cap > 0:
        return np.ones(len(diag))
    return np.sqrt(np.minimum(1.0, cap / np.where(diag > 0, diag, cap)))


def clipped_channels(h: np.ndarray, clip: float) -> np.ndarray:
    """H with every input channel's scale capped (:func:`channel_scale` on both sides, so no channel weighs
    more than ``clip`` times the median one), then scaled to mean diagonal 1.

    Why: transformers carry "massive activations", a few input channels hundreds of times larger than
    the rest (MiniLM layer 0's FFN output has one such channel). The raw objective then spends a whole
    BQQ group's few scalars and shared binaries on reproducing those channels exactly and sacrifices
    all others; the output error under H falls while the model breaks (MiniLM sentence embeddings with
    that one layer quantized: far from the FP model's under the raw H, a little closer than data-free
    with the cap at 3; measured when the cap was introduced, in no committed table;
    ``benchmarks/ptq_transformer.py --rows bqq+ --option channel_clip=...`` compares caps on the whole
    model).
    """
    scale = channel_scale(h, clip)
    h = h * scale[:, None]
    h *= scale[None, :]  # in place: one n x n copy, not three
    h /= float(np.trace(h)) / h.shape[0]
    return h


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
    upper = upper_inverse_factor(np.array(h, np.float64, copy=True))
    out, start = [], 0
    for size in col_sizes:
        stop = start + size
        inv_diag = np.linalg.inv(upper[start:stop, start:stop])  # U_kk⁻¹ (upper triangular)
        schur = inv_diag @ inv_diag.T
        carry = -inv_diag @ upper[start:stop, stop:] if stop < h.shape[0] else None
        out.append((slice(start, stop), (schur + schur.T) / 2, carry))
        start = stop
    return out
