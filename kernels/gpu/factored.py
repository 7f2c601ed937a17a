"""x·Ŵᵀ in the factored form, Triton kernels of the decode and the tensor-core "factored" paths.

For group (a, b), stack i, a token's columns x_b of block b and its output rows j of group row a:

    v_ik = Σ_c Z_i[k, c] x_b[c]                                         (_z_kernel)
    out_j = Σ_b ( Σ_i Σ_k Y_i[j, k] r_i v_ik + Σ_i t_i Σ_k v_ik + rowterm_j Σx_b ) + bias_j    (_y_kernel)

``_z_kernel`` writes v (zeros past each group's rank) and Σx_b to a work buffer (tokens × (R·C·P·Lmax + C)
fp32, small enough to stay in L2 at decode sizes). ``_y_kernel`` owns a tile of output rows and walks the
(column block, stack) pairs of its group row. Each step waits for a load of packed bits from memory,
so the pairs are split over ``splits`` programs of a few steps each; then each writes a partial sum and
``_sum_kernel`` adds the partials in split order (and the bias). No atomics: the same inputs give the same
bits. Each byte of Z and Y is read by one program per token tile, so at decode (one token tile) the
packed bits are read once.

Both main kernels come in two variants (constexpr ``DOT``):

* ``DOT=False`` (decode, few tokens): products on the CUDA cores in fp32, as broadcast-multiply-sum over a
  (tokens, rows, cols) register tile; the 0/1 tile is expanded once and reused for every token.
* ``DOT=True`` (factored, more tokens): ``tl.dot`` on tensor cores with fp32 accumulation. The 0/1
  tiles are exact in fp16/bf16; fp16/bf16 activations multiply as they are; v·r_i (fp32) is split into
  bf16 hi + lo (16 significant bits, fp32 range), fp32 activations use ``tf32x3``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .bits import bit_tile, mma


@triton.jit(do_not_specialize=["tokens"])
def _z_kernel(x_ptr, z_ptr, work_ptr, col_start_ptr, col_size_ptr, rank_ptr,
              tokens, n_in, n_cols, stacks, l_max, nb, work_stride, xsum_col,
              BT: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr, DOT: tl.constexpr,
              DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Grid (R·C·P, token tiles, rank tiles): v[t, gi, k] for BT tokens and BK rank entries of one stack;
    zeros for k from the group's rank to Lmax (so that _y_kernel's loads need not wait for the rank)."""
    gi = tl.program_id(0)  # (a * C + b) * P + i; axis 0 because CUDA caps axes 1 and 2 at 65535
    pid_t = tl.program_id(1)
    k0 = tl.program_id(2) * BK
    group = gi // stacks
    b = group % n_cols
    rank = tl.load(rank_ptr + group)
    c0 = tl.load(col_start_ptr + b)
    nc = tl.load(col_size_ptr + b)
    offs_t = pid_t * BT + tl.arange(0, BT)
    offs_k = k0 + tl.arange(0, BK)
    t_ok = offs_t < tokens
    x_rows = x_ptr + offs_t.to(tl.int64)[:, None] * n_in + c0
    z_rows = z_ptr + gi.to(tl.int64) * l_max * nb
    acc = tl.zeros((BT, BK), dtype=tl.float32)
    xsum = tl.zeros((BT,), dtype=tl.float32)
    sum_writer = (k0 == 0) & (gi < n_cols * stacks) & (gi % stacks == 0)  # group (0, b), stack 0: Σx_b
    # rank tiles past the rank are zero bits: skip their columns (the one Σx_b writer has k0 = 0 < rank)
    for n0 in range(0, tl.where(k0 < rank, nc, 0), BN):
        offs_n = n0 + tl.arange(0, BN)
        x = tl.load(x_rows + offs_n[None, :], mask=t_ok[:, None] & (offs_n[None, :] < nc), other=0.0)
        bits = bit_tile(z_rows, offs_k, l_max, n0 // 8, nb, nb, BK, BN)  # (BK, BN)
        if DOT:
            acc = mma(x, tl.trans(bits), acc, DOT_DTYPE, PRECISION, UPCAST)
        else:
            acc += tl.sum(x.to(tl.float32)[:, None, :] * bits.to(tl.float32)[None, :, :], axis=2)
        xsum += tl.sum(x.to(tl.float32), axis=1)  # cheap beside the product; one program stores it
    work_rows = work_ptr + offs_t.to(tl.int64) * work_stride
    tl.store(work_rows[:, None] + gi * l_max + offs_k[None, :], acc, mask=t_ok[:, None] & (offs_k[None, :] < l_max))
    tl.store(work_rows + xsum_col + b, xsum, mask=tl.where(sum_writer, t_ok, False))  # (interpreter: no `&`)


@triton.jit(do_not_specialize=["tokens"])
def _y_kernel(work_ptr, y_ptr, r_ptr, t_ptr, rowterm_ptr, bias_ptr, out_ptr, row_start_ptr, row_size_ptr,
              tokens, n_out, n_cols, stacks, l_max, lb, m_max, work_stride, xsum_col, m_tiles, pairs_per_split,
              HAS_BIAS: tl.constexpr, FINAL: tl.constexpr, BT: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
              DOT: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Grid (R, token tiles, row tiles × splits): BT tokens and BM rows of group row a, over the
    (column block, stack) pairs of one split. FINAL (one split): out[t, row] (+ bias) in out's dtype; else
    the fp32 partial sum of split s at out[s, t, row] (a (splits, T, M) buffer) for _sum_kernel."""
    a = tl.program_id(0)
    pid_t = tl.program_id(1)
    pid_m = tl.program_id(2) % m_tiles
    split = tl.program_id(2) // m_tiles
    m = tl.load(row_size_ptr + a)
    if pid_m * BM < m:
        m0 = tl.load(row_start_ptr + a)
        offs_t = pid_t * BT + tl.arange(0, BT)
        offs_m = pid_m * BM + tl.arange(0, BM)
        t_ok = offs_t < tokens
        m_ok = offs_m < m_max
        work_rows = work_ptr + offs_t.to(tl.int64) * work_stride
        acc = tl.zeros((BT, BM), dtype=tl.float32)
        tsum = tl.zeros((BT,), dtype=tl.float32)  # Σ_i t_i Σ_k v_ik: the same for every row
        pairs = n_cols * stacks
        # The loads of a step do not depend on each other nor on earlier steps (v is zero past the ranks).
        for p in range(split * pairs_per_split, tl.minimum((split + 1) * pairs_per_split, pairs)):
            gi = a * pairs + p  # (a * C + b) * P + i
            b = p // stacks
            first = p % stacks == 0  # stack 0 of a column block also adds rowterm_j Σx_b
            xsum = tl.load(work_rows + xsum_col + b, mask=tl.where(first, t_ok, False), other=0.0)
            rowterm = tl.load(rowterm_ptr + (a * n_cols + b).to(tl.int64) * m_max + offs_m,
                              mask=tl.where(first, m_ok, False), other=0.0)
            acc += xsum[:, None] * rowterm[None, :]
            r_i = tl.load(r_ptr + gi)
            t_i = tl.load(t_ptr + gi)
            y_rows = y_ptr + gi.to(tl.int64) * m_max * lb
            for k0 in range(0, l_max, BK):
                offs_k = k0 + tl.arange(0, BK)
                v = tl.load(work_rows[:, None] + gi * l_max + offs_k[None, :],
                            mask=t_ok[:, None] & (offs_k[None, :] < l_max), other=0.0)
                tsum += t_i * tl.sum(v, axis=1)
                vr = v * r_i
                bits = bit_tile(y_rows, offs_m, m_max, k0 // 8, lb, lb, BM, BK)  # (BM, BK)
                if DOT:
                    if SPLIT:  # vr = hi + lo, each exact in bf16: two products, ~16 significant bits
                        hi = vr.to(tl.bfloat16)
                        lo = vr - hi.to(tl.float32)
                        acc = mma(hi, tl.trans(bits), acc, tl.bfloat16, PRECISION, UPCAST)
                        acc = mma(lo, tl.trans(bits), acc, tl.bfloat16, PRECISION, UPCAST)
                    else:
                        acc = mma(vr, tl.trans(bits), acc, tl.float32, PRECISION, UPCAST)
                else:
                    acc += tl.sum(vr[:, None, :] * bits.to(tl.float32)[None, :, :], axis=2)
        acc += tsum[:, None]
        row_ok = t_ok[:, None] & (offs_m[None, :] < m)
        if FINAL:
            if HAS_BIAS:
                acc += tl.load(bias_ptr + m0 + offs_m, mask=offs_m < m, other=0.0).to(tl.float32)[None, :]
            out = out_ptr + offs_t.to(tl.int64)[:, None] * n_out + m0 + offs_m[None, :]
            tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok)
        else:
            rows = (split * tokens + offs_t).to(tl.int64)
            tl.store(out_ptr + rows[:, None] * n_out + m0 + offs_m[None, :], acc, mask=row_ok)


@triton.jit
def _sum_kernel(partial_ptr, bias_ptr, out_ptr, count, n_out, splits, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """out (T·M,) = Σ_s partial[s] (+ bias per row) in split order, cast to out's dtype; grid (count / BLOCK,)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < count
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for split in range(0, splits):
        acc += tl.load(partial_ptr + split * count + offs, mask=ok, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs % n_out, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)
