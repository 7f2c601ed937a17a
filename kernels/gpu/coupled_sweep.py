"""The output-aware V phase as a Triton kernel: a Gauss-Seidel pass over rows coupled through a weight H.

Same update as the numba :func:`bqq_kernels.cpu.coupled_row_sweep`: the energy in V of
tr((X - α U Vᵀ) H (X - α U Vᵀ)ᵀ) is -2α Σ_aj v_aj P_aj + α² Σ_ab H_ab v_aᵀ K v_b with P = H Xᵀ U and
K = UᵀU (diagonal m). Rows are swept in order; for row a the coupling hq = Σ_b H_ab q_b (q = V K) is summed
once, then its l entries are updated one by one with the field
f = 2α (P_aj - α (hq_j - H_aa K_jj v_aj)), tanh(f/T) (soft, the numba ``fast_tanh``) or sign(f) (hard, kept
at f = 0); each change updates q_a and hq by a multiple of K's row j, so the next row sees it.

Rows cannot run in parallel (each sees all earlier ones through H), so one program owns one problem and
parallelizes inside a row: the coupling sum over the n other rows and the l-vectors of q and hq are spread
over the program's threads. Layout: entry-major, like the row sweep: v, p, q (B, l, n).

Sign changes are counted per program and written once (no atomics): deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .row_sweep import interpreted, mean_field_update

NUM_WARPS = 4
TILE = 4096  # entries of the (l, other rows) tile summed at once for the coupling


@triton.jit
def _coupled_sweep_kernel(p_ptr, q_ptr, v_ptr, k_ptr, h_ptr, alpha_ptr, beta_ptr, flips_ptr, n, l, h_stride,
                          HARD: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_O: tl.constexpr):
    b = tl.program_id(0)
    cols = tl.arange(0, BLOCK_L)  # the entries j of a row
    col_ok = cols < l
    base = b.to(tl.int64) * l * n  # v, p and q of problem b, entry-major (l, n)
    h_base = b.to(tl.int64) * h_stride  # (a broadcast H has stride 0)
    k_base = b.to(tl.int64) * l * l
    a = tl.load(alpha_ptr + b)
    beta = tl.load(beta_ptr + b)
    two_a = 2.0 * a
    count = tl.zeros((BLOCK_L,), dtype=tl.int32)
    for row in range(0, n):
        # hq = Σ_o H[row, o] q[:, o] over the current q (earlier rows already updated).
        hq = tl.zeros((BLOCK_L,), dtype=tl.float32)
        for o0 in range(0, n, BLOCK_O):
            offs_o = o0 + tl.arange(0, BLOCK_O)
            o_ok = offs_o < n
            h_row = tl.load(h_ptr + h_base + row * n + offs_o, mask=o_ok, other=0.0)
            q_tile = tl.load(q_ptr + base + cols[:, None] * n + offs_o[None, :],
                             mask=col_ok[:, None] & o_ok[None, :], other=0.0)
            hq += tl.sum(q_tile * h_row[None, :], axis=1)
        h_self = tl.load(h_ptr + h_base + row * n + row)
        v_row = tl.load(v_ptr + base + cols * n + row, mask=col_ok, other=0.0)
        q_row = tl.load(q_ptr + base + cols * n + row, mask=col_ok, other=0.0)
        for j in range(0, l):
            # This row's v is stored at its end: entry j's old value and P_aj are still in memory.
            old = tl.load(v_ptr + base + j * n + row)
            pj = tl.load(p_ptr + base + j * n + row)
            kjj = tl.load(k_ptr + k_base + j * l + j)
            hqj = tl.sum(tl.where(cols == j, hq, 0.0), axis=0)
            field = two_a * (pj - a * (hqj - h_self * kjj * old))
            new = mean_field_update(field, beta, old, HARD)
            count += tl.where(cols == 0, ((new > 0) != (old > 0)).to(tl.int32), 0)
            delta = new - old
            k_row = tl.load(k_ptr + k_base + j * l + cols, mask=col_ok, other=0.0)
            v_row = tl.where(cols == j, new, v_row)
            q_row += delta * k_row
            hq += (h_self * delta) * k_row
        # This row's reads of v and q (any thread) happen before its stores, and those before the next
        # row's coupling sum reads them.
        tl.debug_barrier()
        tl.store(v_ptr + base + cols * n + row, v_row, mask=col_ok)
        tl.store(q_ptr + base + cols * n + row, q_row, mask=col_ok)
        tl.debug_barrier()
    tl.store(flips_ptr + b, tl.sum(count, axis=0))


def coupled_row_sweep(pt: torch.Tensor, qt: torch.Tensor, vt: torch.Tensor, k: torch.Tensor, h: torch.Tensor,
                      alpha: torch.Tensor, inv_temp: torch.Tensor, hard: bool, *, num_warps: int = NUM_WARPS,
                      count: bool = True) -> torch.Tensor | None:
    """One Gauss-Seidel pass over every entry of v, rows coupled through H, in place.

    Args:
        pt: (B, l, n) float32, (H Xᵀ U)ᵀ = Uᵀ X H.
        qt: (B, l, n) float32, (V K)ᵀ = K Vᵀ; updated in place (kept equal to K Vᵀ).
        vt: (B, l, n) float32, Vᵀ: magnetizations (soft) or ±1 signs (hard); updated in place.
        k: (B, l, l) float32, UᵀU with its diagonal set to U's row count (symmetric).
        h: (B, n, n) float32 symmetric H (contiguous rows; a batch broadcast with stride 0 is fine).
        alpha: (B,) float32 α; inv_temp: (B,) float32 1/T (unused when ``hard``).
        hard: sign updates (T = 0) instead of tanh.
        count: return the number of sign changes (False: None).

    Returns:
        A 0-d int64 tensor (entries whose sign changed, value > 0 counting as positive), or None.
    """
    nbatch, l, n = vt.shape
    if (pt.shape != vt.shape or qt.shape != vt.shape or k.shape != (nbatch, l, l) or h.shape != (nbatch, n, n)
            or alpha.shape != (nbatch,) or inv_temp.shape != (nbatch,)):
        raise ValueError(f"shapes do not match: pt {tuple(pt.shape)}, qt {tuple(qt.shape)}, vt {tuple(vt.shape)}, "
                         f"k {tuple(k.shape)}, h {tuple(h.shape)}")
    if any(t.dtype != torch.float32 or t.device != vt.device for t in (pt, qt, vt, k, h, alpha, inv_temp)):
        raise ValueError("pt, qt, vt, k, h, alpha and inv_temp must be float32 tensors on one device")
    if not all(t.is_contiguous() for t in (pt, qt, vt, k, alpha, inv_temp)) or h[0].stride() != (n, 1):
        raise ValueError("pt, qt, vt, k, alpha and inv_temp must be contiguous, and h's rows too")
    if vt.device.type != "cuda" and not interpreted():
        raise RuntimeError("compiled Triton kernels need CUDA tensors (CPU tensors only in the interpreter)")
    flips = torch.empty(nbatch, dtype=torch.int32, device=vt.device)
    if nbatch and n and l:
        block_l = triton.next_power_of_2(l)
        block_o = min(triton.next_power_of_2(n), max(1, TILE // block_l))
        _coupled_sweep_kernel[(nbatch,)](pt, qt, vt, k, h, alpha, inv_temp, flips, n, l, h.stride(0),
                                         HARD=bool(hard), BLOCK_L=block_l, BLOCK_O=block_o,
                                         num_warps=1 if interpreted() else num_warps, enable_fp_fusion=True)
    elif count:
        flips.zero_()
    return flips.sum(dtype=torch.int64) if count else None
