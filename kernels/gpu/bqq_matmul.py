"""x·Ŵᵀ for a BQQ layer from the packed bits, in Triton (NVIDIA GPUs; CPU through TRITON_INTERPRET=1).

Two kernels, each a tiled matmul whose binary operand is expanded from packed bytes in registers
(the bits never exist as a dense matrix in memory, and Ŵ is never formed):

1. ``_z_kernel``: U[t, a, b, i, k] = Σ_c x[t, col_start[b] + c] · Z_i^{ab}[k, c]  (tokens × ranks).
2. ``_y_kernel``: out[t, row_start[a] + j] = Σ_b ( Σ_i Σ_k Y_i^{ab}[j, k] r_i U[t, a, b, i, k]
   + rowterm[a, b, j] · Σx_b[t] + Σ_i t_i Σ_k U[t, a, b, i, k] ).

Each output tile is owned by one program, which loops over the column blocks b in order: no atomics,
deterministic. Products run in IEEE fp32 (``input_precision="ieee"``, not TF32) so results match the
fp32 reference to ~1e-6.
"""

from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from ..layout import LayoutTensors

BLOCK_T = 16  # tokens per program (tl.dot needs >= 16)
BLOCK_K = 32  # rank entries per program / per step
BLOCK_N = 64  # input columns per step (a multiple of 8: whole bytes)
BLOCK_M = 32  # output rows per program


@triton.jit
def _z_kernel(x_ptr, z_ptr, u_ptr, col_start_ptr, col_size_ptr, rank_ptr, tokens, n_in, n_cols, stacks, l_max,
              nb_max, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_g = tl.program_id(1)  # ((a * C + b) * P + i)
    pid_k = tl.program_id(2)
    group = pid_g // stacks
    b = group % n_cols
    c0 = tl.load(col_start_ptr + b)
    nc = tl.load(col_size_ptr + b)
    rank = tl.load(rank_ptr + group)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.float32)
    z_rows = z_ptr + (pid_g.to(tl.int64) * l_max + offs_k[:, None]) * nb_max
    for n0 in range(0, nc, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        x = tl.load(x_ptr + offs_t[:, None].to(tl.int64) * n_in + c0 + offs_n[None, :],
                    mask=(offs_t[:, None] < tokens) & (offs_n[None, :] < nc), other=0.0)
        byte = tl.load(z_rows + offs_n[None, :] // 8, mask=(offs_k[:, None] < rank) & (offs_n[None, :] < nc),
                       other=0)
        bits = ((byte >> (offs_n[None, :] % 8).to(tl.uint8)) & 1).to(tl.float32)  # (BLOCK_K, BLOCK_N)
        acc += tl.dot(x, tl.trans(bits), input_precision="ieee")
    u_offs = (offs_t[:, None].to(tl.int64) * (tl.num_programs(1) * l_max) + pid_g * l_max + offs_k[None, :])
    tl.store(u_ptr + u_offs, acc, mask=(offs_t[:, None] < tokens) & (offs_k[None, :] < l_max))


@triton.jit
def _y_kernel(u_ptr, y_ptr, r_ptr, t_ptr, rowterm_ptr, xsum_ptr, out_ptr, row_start_ptr, row_size_ptr, rank_ptr,
              tokens, n_out, n_cols, stacks, l_max, lb_max, m_max, BLOCK_T: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_K: tl.constexpr):
    pid_t = tl.program_id(0)
    a = tl.program_id(1)
    pid_m = tl.program_id(2)
    m0 = tl.load(row_start_ptr + a)
    m = tl.load(row_size_ptr + a)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    t_ok = offs_t < tokens
    acc = tl.zeros((BLOCK_T, BLOCK_M), dtype=tl.float32)
    groups_total = tl.num_programs(1) * n_cols * stacks
    for b in range(0, n_cols):
        group = a * n_cols + b
        rank = tl.load(rank_ptr + group)
        rowterm = tl.load(rowterm_ptr + group.to(tl.int64) * m_max + offs_m, mask=offs_m < m, other=0.0)
        xsum = tl.load(xsum_ptr + offs_t.to(tl.int64) * n_cols + b, mask=t_ok, other=0.0)
        acc += xsum[:, None] * rowterm[None, :]
        for i in range(0, stacks):
            gi = group * stacks + i
            r_i = tl.load(r_ptr + gi)
            t_i = tl.load(t_ptr + gi)
            for k0 in range(0, rank, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                u = tl.load(u_ptr + offs_t[:, None].to(tl.int64) * (groups_total * l_max) + gi * l_max
                            + offs_k[None, :], mask=t_ok[:, None] & (offs_k[None, :] < rank), other=0.0)
                byte = tl.load(y_ptr + (gi.to(tl.int64) * m_max + offs_m[:, None]) * lb_max + offs_k[None, :] // 8,
                               mask=(offs_m[:, None] < m) & (offs_k[None, :] < rank), other=0)
                bits = ((byte >> (offs_k[None, :] % 8).to(tl.uint8)) & 1).to(tl.float32)  # (BLOCK_M, BLOCK_K)
                acc += tl.dot(u * r_i, tl.trans(bits), input_precision="ieee")
                acc += t_i * tl.sum(u, axis=1)[:, None]
    out = out_ptr + offs_t[:, None].to(tl.int64) * n_out + m0 + offs_m[None, :]
    tl.store(out, acc, mask=t_ok[:, None] & (offs_m[None, :] < m))


def interpreted() -> bool:
    """Whether these kernels run in Triton's interpreter (TRITON_INTERPRET=1 when they were defined).

    Interpreted, they take CPU tensors (the tests run them so without a GPU); compiled, only GPU ones.
    """
    return isinstance(_z_kernel, InterpretedFunction)


def bqq_linear_triton(x: torch.Tensor, w: LayoutTensors, out_features: int) -> torch.Tensor:
    """x (..., N) float32 on a CUDA device (the CPU when :func:`interpreted`) -> x Ŵᵀ (..., M) float32;
    ``w`` on x's device."""
    m, n = out_features, x.shape[-1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, n).contiguous()
    tokens = x2.shape[0]
    rows, cols, stacks, l_max, nb_max = w.z.shape
    m_max, lb_max = w.y.shape[3], w.y.shape[4]
    out = torch.empty(tokens, m, dtype=torch.float32, device=x.device)
    if tokens == 0:
        return out.reshape(*lead, m)
    # Σx per token and column block (the rowterm factor): C small reductions.
    bounds = torch.cat([w.col_start.long(), torch.tensor([n], device=x.device)]).tolist()
    xsum = torch.stack([x2[:, lo:hi].sum(1) for lo, hi in itertools.pairwise(bounds)], dim=1)
    u = torch.empty(tokens, rows * cols * stacks, l_max, dtype=torch.float32, device=x.device)
    grid_z = (triton.cdiv(tokens, BLOCK_T), rows * cols * stacks, triton.cdiv(l_max, BLOCK_K))
    _z_kernel[grid_z](x2, w.z, u, w.col_start, w.col_size, w.rank, tokens, n, cols, stacks,
                      l_max, nb_max, BLOCK_T=BLOCK_T, BLOCK_K=BLOCK_K, BLOCK_N=BLOCK_N)
    grid_y = (triton.cdiv(tokens, BLOCK_T), rows, triton.cdiv(m_max, BLOCK_M))
    _y_kernel[grid_y](u, w.y, w.r, w.t, w.rowterm, xsum.contiguous(), out, w.row_start,
                      w.row_size, w.rank, tokens, m, cols, stacks, l_max, lb_max, m_max,
                      BLOCK_T=BLOCK_T, BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K)
    return out.reshape(*lead, m)
