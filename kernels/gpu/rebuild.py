"""The prefill path's first half: Ŵ rebuilt from the packed bits by a Triton kernel, in the activations'
dtype, for a dense matmul (cuBLAS through ``F.linear``) to consume.

Each program writes one (BM, BN) tile of Ŵ inside one group (a, b):

    Ŵ_tile = Σ_i ( r_i · Y_i Z_i  +  t_i · 1 colsum(Z_i) ) + rowterm 1ᵀ

Y_i Z_i is a product of 0/1 tiles expanded to fp16 on tensor cores with fp32 accumulation: counts of at
most the rank, exact. The scalars are applied in fp32 and the tile is rounded once to the output dtype.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .bits import bit_tile, mma


@triton.jit
def _rebuild_kernel(z_ptr, y_ptr, r_ptr, t_ptr, rowterm_ptr, row_start_ptr, row_size_ptr, col_start_ptr,
                    col_size_ptr, rank_ptr, w_ptr, n_in, n_cols, stacks, l_max, nb, lb, m_max,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Grid (R·C, row tiles, column tiles); w (M, N) row-major in the output dtype."""
    group = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_n = tl.program_id(2)
    a = group // n_cols
    b = group % n_cols
    m = tl.load(row_size_ptr + a)
    nc = tl.load(col_size_ptr + b)
    if (pid_m * BM < m) & (pid_n * BN < nc):
        m0 = tl.load(row_start_ptr + a)
        c0 = tl.load(col_start_ptr + b)
        rank = tl.load(rank_ptr + group)
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_n = pid_n * BN + tl.arange(0, BN)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for i in range(0, stacks):
            gi = group * stacks + i
            y_rows = y_ptr + gi.to(tl.int64) * m_max * lb
            z_rows = z_ptr + gi.to(tl.int64) * l_max * nb
            count = tl.zeros((BM, BN), dtype=tl.float32)
            zsum = tl.zeros((BN,), dtype=tl.float32)
            for k0 in range(0, rank, BK):
                offs_k = k0 + tl.arange(0, BK)
                ybits = bit_tile(y_rows, offs_m, m_max, k0 // 8, lb, lb, BM, BK)  # (BM, BK)
                zbits = bit_tile(z_rows, offs_k, l_max, pid_n * (BN // 8), nb, nb, BK, BN)  # (BK, BN)
                count = mma(ybits, zbits, count, tl.float16, "tf32", False)
                zsum += tl.sum(zbits.to(tl.float32), axis=0)
            acc += tl.load(r_ptr + gi) * count + tl.load(t_ptr + gi) * zsum[None, :]
        acc += tl.load(rowterm_ptr + group.to(tl.int64) * m_max + offs_m, mask=offs_m < m_max, other=0.0)[:, None]
        w = w_ptr + (m0 + offs_m).to(tl.int64)[:, None] * n_in + c0 + offs_n[None, :]
        tl.store(w, acc.to(w_ptr.dtype.element_ty), mask=(offs_m[:, None] < m) & (offs_n[None, :] < nc))
