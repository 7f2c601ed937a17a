"""x·Ŵᵀ for a BQQ layer straight from the packed bits (numba, multithreaded, fp32).

Both products are sums of activations selected by bits, done a byte (8 bits) at a time with lookup
tables, the table-lookup form of "conditional adds over packed words" (as in LUT-GEMM / T-MAC):

1. For every 8 columns of an input block, a 256-entry table holds the sum of x over each subset of
   those columns (built incrementally: table[b] = table[b & (b-1)] + x[lowest bit of b]). Each row k
   of Z_i then costs one lookup per byte: v_ik = Σ_c table_c[Z_i[k, c]].
2. The same with tables over 8 entries of r_i·v_i gives Σ_k Y_i[j, k] r_i v_ik per output row j.
3. Plus rowterm[j]·Σx and Σ_i t_i Σ_k v_ik (see :mod:`kernels.layout`).

Every table entry and lookup is a vector over a tile of tokens (the innermost, contiguous axis), so
the adds vectorize. Work per token and group: 32·n + p·l·n/8 + p·(32·l + m·l/8) adds, against m·n
multiply-adds for a dense fp32 matmul, and the weight traffic is the packed bits (p·l·(m+n)/8 bytes).

Parallel tasks are (token tile, block of group rows); every output element is computed by one task
in a fixed order, so results are bit-identical for any number of threads.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch

from ..layout import BQQLayout

TOKEN_TILE = 16  # tokens per task: one or two SIMD vectors of fp32; tables stay in L2 (≈ 800 KB at 384 cols)
LOWEST_BIT = np.array([0] + [(b & -b).bit_length() - 1 for b in range(1, 256)], np.int64)


@nb.njit(cache=True, nogil=True)
def _column_tables(x_t, t0, tn, c0, nc, lowest_bit, tables, colsum):
    """tables[c, b, q] = Σ of x_t[c0 + 8c + i, t0 + q] over the set bits i of b; colsum[q] = Σ of the block."""
    for q in range(tn):
        colsum[q] = 0.0
    for c in range((nc + 7) // 8):
        for q in range(tn):
            tables[c, 0, q] = 0.0
        for byte in range(1, 256):
            col = 8 * c + lowest_bit[byte]
            prev = byte & (byte - 1)
            if col < nc:
                for q in range(tn):
                    tables[c, byte, q] = tables[c, prev, q] + x_t[c0 + col, t0 + q]
            else:  # columns past the block: their bits are zero in the packed data, never looked up
                for q in range(tn):
                    tables[c, byte, q] = tables[c, prev, q]
        for i in range(min(8, nc - 8 * c)):
            for q in range(tn):
                colsum[q] += x_t[c0 + 8 * c + i, t0 + q]


@nb.njit(cache=True, nogil=True)
def _group(tables, colsum, tn, z, y, r, t, rowterm, l, m, nb_bytes, lowest_bit, v, ytables, tsum, acc, out_t, m0,
           t0):
    """Adds one group's contribution W_ab x to out_t[m0:m0+m, t0:t0+tn]."""
    stacks = z.shape[0]
    lb = (l + 7) // 8
    for q in range(tn):
        tsum[q] = 0.0
    for i in range(stacks):
        ri, ti = r[i], t[i]
        for k in range(l):  # v_ik = (Z_i x)_k, one table lookup per byte of row k
            for q in range(tn):
                acc[q] = 0.0
            for c in range(nb_bytes):
                byte = z[i, k, c]
                for q in range(tn):
                    acc[q] += tables[c, byte, q]
            for q in range(tn):
                tsum[q] += ti * acc[q]
                v[k, q] = ri * acc[q]
        for k in range(l, 8 * lb):
            for q in range(tn):
                v[k, q] = 0.0
        for c in range(lb):  # tables over 8 entries of r_i v_i
            for q in range(tn):
                ytables[i, c, 0, q] = 0.0
            for byte in range(1, 256):
                k = 8 * c + lowest_bit[byte]
                prev = byte & (byte - 1)
                for q in range(tn):
                    ytables[i, c, byte, q] = ytables[i, c, prev, q] + v[k, q]
    for j in range(m):
        rj = rowterm[j]
        for q in range(tn):
            acc[q] = rj * colsum[q] + tsum[q]
        for i in range(stacks):
            for c in range(lb):
                byte = y[i, j, c]
                for q in range(tn):
                    acc[q] += ytables[i, c, byte, q]
        for q in range(tn):
            out_t[m0 + j, t0 + q] += acc[q]


def _tasks(x_t, out_t, tile, rows_per_task, z, y, r, t, rowterm, row_start, row_size, col_start, col_size, rank,
           lowest_bit):
    n_rows, n_cols, stacks, _l_max, nb_max = z.shape
    lb_max = y.shape[4]
    tokens = x_t.shape[1]
    n_tiles = (tokens + tile - 1) // tile
    row_blocks = (n_rows + rows_per_task - 1) // rows_per_task
    for task in nb.prange(n_tiles * row_blocks):
        tile_index = task // row_blocks
        block = task - tile_index * row_blocks
        t0 = tile_index * tile
        tn = min(tile, tokens - t0)
        a0 = block * rows_per_task
        a1 = min(n_rows, a0 + rows_per_task)
        tables = np.empty((nb_max, 256, tn), np.float32)
        colsum = np.empty(tn, np.float32)
        v = np.empty((8 * lb_max, tn), np.float32)
        ytables = np.empty((stacks, lb_max, 256, tn), np.float32)
        tsum = np.empty(tn, np.float32)
        acc = np.empty(tn, np.float32)
        for b in range(n_cols):  # the column tables of block b serve every group row of the task
            c0, nc = col_start[b], col_size[b]
            _column_tables(x_t, t0, tn, c0, nc, lowest_bit, tables, colsum)
            for a in range(a0, a1):
                _group(tables, colsum, tn, z[a, b], y[a, b], r[a, b], t[a, b], rowterm[a, b], rank[a, b],
                       row_size[a], (nc + 7) // 8, lowest_bit, v, ytables, tsum, acc, out_t, row_start[a], t0)


_tasks_parallel = nb.njit(parallel=True, cache=True)(_tasks)
_tasks_serial = nb.njit(parallel=False, cache=True)(_tasks)


def bqq_linear_cpu(x: torch.Tensor, layout: BQQLayout) -> torch.Tensor:
    """x (..., N) float32 on the CPU -> x Ŵᵀ (..., M) float32, from the packed bits only."""
    m, n = layout.shape
    lead = x.shape[:-1]
    x_t = np.ascontiguousarray(x.detach().reshape(-1, n).numpy().T)  # (N, T): tokens innermost
    tokens = x_t.shape[1]
    out_t = np.zeros((m, tokens), np.float32)
    if tokens:
        rows = layout.rank.shape[0]
        tiles = -(-tokens // TOKEN_TILE)
        threads = nb.get_num_threads()
        # Enough token tiles: each task takes all group rows and builds each column table once.
        # Few tokens: split the group rows instead, so that a single token still uses every thread.
        rows_per_task = rows if tiles >= threads else max(1, -(-rows // threads))
        tasks = tiles * -(-rows // rows_per_task)
        run = _tasks_parallel if tasks > 1 and threads > 1 else _tasks_serial
        L = layout
        run(x_t, out_t, TOKEN_TILE, rows_per_task, L.z.numpy(), L.y.numpy(), L.r.numpy(), L.t.numpy(),
            L.rowterm.numpy(), L.row_start.numpy(), L.row_size.numpy(), L.col_start.numpy(), L.col_size.numpy(),
            L.rank.numpy(), LOWEST_BIT)
    return torch.from_numpy(out_t.T.copy()).reshape(*lead, m)
