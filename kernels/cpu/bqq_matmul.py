"""x·Ŵᵀ for a BQQ layer straight from the packed bits (numba, multithreaded, fp32).

Both products are sums of activations selected by bits, done four bits at a time with lookup tables,
the table form of "conditional adds over packed words" (as in LUT-GEMM / T-MAC):

1. For every 4 columns of an input block, a 16-row table holds the sum of x over each subset of those
   columns (built incrementally: row e = row (e & (e-1)) + x[lowest bit of e], 15 adds). A code byte
   of Z_i selects one row of its low-nibble table and one of its high-nibble table, so
   v_ik = (Z_i x)_k costs two row loads per byte of row k of Z_i.
2. The same with tables over 4 entries of r_i·v_i gives Σ_k Y_i[j, k] r_i v_ik for every output row j.
3. Plus rowterm[j]·Σx and Σ_i t_i Σ_k v_ik (see :mod:`kernels.layout`).

A table row is a vector over ``lanes`` tokens (16 for batches, 1 for a few tokens), so every add is a
SIMD add (:mod:`kernels.cpu.simd`). Per group and 16 tokens the work is p·l·n/8 + p·m·l/8 pairs of
16-float row loads plus about 4(n + p·l) row adds for the tables, against m·n·16 multiply-adds for a
dense fp32 matmul, and the only weight traffic is the packed bits (p·l·(m+n)/8 bytes).

Parallel tasks are (token tile, block of group rows); every output element is computed by one task
in a fixed order, so results are bit-identical for any number of threads.
"""

from __future__ import annotations

import operator
import weakref

import numba as nb
import numpy as np
import torch

from ..layout import LayoutTensors
from .builds import parallel_and_serial
from .simd import BYTE_ROWS, NIBBLE_ROWS, SUM_BLOCK, lut_accumulate, vadd

WIDE = 16  # tokens per table row for batches (two AVX2 / one AVX-512 register of fp32)
NARROW_BELOW = 8  # fewer tokens than this: one token per row (no wasted lanes)
BLOCK_TABLE_BYTES = 16384  # table bytes one pass over a block of code bytes reads: half an L1 data cache
LOWEST_BIT = np.array([0] + [(e & -e).bit_length() - 1 for e in range(1, NIBBLE_ROWS)], np.int64)


@nb.njit(cache=True, nogil=True)
def _nibble_tables(src, n_chunks, tag, tables, lowest_bit):
    """tables: 16 rows per 4-entry chunk of src (rows of ``len(tag)`` floats): row e = Σ of the set bits of e."""
    lanes = len(tag)
    for chunk in range(n_chunks):
        base = chunk * NIBBLE_ROWS * lanes
        for q in range(lanes):
            tables[base + q] = 0.0
        for e in range(1, NIBBLE_ROWS):
            vadd(tables, base + e * lanes, tables, base + (e & (e - 1)) * lanes, src,
                 (4 * chunk + lowest_bit[e]) * lanes, tag)


@nb.njit(cache=True, nogil=True)
def column_tables(x, t0, tn, c0, nc, xb, colsum, tables, tag, lowest_bit):
    """The lookup tables of one column block for one token tile; returns the block's code bytes per row.

    xb[col][lane] = x[t0 + lane, c0 + col] for the block's ``nc`` columns and ``tn`` tokens (columns past
    nc keep stale values: only zero bits ever select them; lanes past tn stay zero), colsum[lane] = the
    sum of those columns, and ``tables`` its nibble tables (:func:`_nibble_tables`).
    """
    lanes = len(tag)
    nbytes = (nc + 7) // 8
    nbytes += nbytes % 2
    for q in range(lanes):
        colsum[q] = 0.0
    for col in range(nc):
        for q in range(tn):
            value = x[t0 + q, c0 + col]
            xb[col * lanes + q] = value
            colsum[q] += value
    _nibble_tables(xb, 2 * nbytes, tag, tables, lowest_bit)
    return nbytes


def _tasks(x, out, tag, rows_per_task, z, y, r, t, rowterm, row_start, row_size, col_start, col_size, rank,
           lowest_bit):
    """out (T, M) = x (T, N) Ŵᵀ; the layout arrays as in :class:`~kernels.layout.BQQLayout`.

    One task per (tile of ``len(tag)`` tokens, block of ``rows_per_task`` group rows); each writes only
    its own outputs.
    """
    lanes = len(tag)  # tokens per table row: a compile-time constant (the tuple's length is in its type)
    n_rows, n_cols, stacks, l_max, nb_max = z.shape
    m_max, lb_max = y.shape[3], y.shape[4]
    tokens = x.shape[0]
    z_flat, y_flat = z.reshape(-1), y.reshape(-1)
    n_tiles = (tokens + lanes - 1) // lanes
    # Code bytes per pass, a multiple of SUM_BLOCK: every width sums in the same order (batch invariance).
    block_bytes = max(1, BLOCK_TABLE_BYTES // (BYTE_ROWS * lanes * 4) // SUM_BLOCK) * SUM_BLOCK
    row_blocks = (n_rows + rows_per_task - 1) // rows_per_task
    for task in nb.prange(n_tiles * row_blocks):
        tile = task // row_blocks
        block = task - tile * row_blocks
        t0 = tile * lanes
        tn = min(lanes, tokens - t0)  # the last tile's missing tokens are zeros in xb
        a0 = block * rows_per_task
        a1 = min(n_rows, a0 + rows_per_task)
        r0 = row_start[a0]
        n_out = row_start[a1 - 1] + row_size[a1 - 1] - r0
        acc = np.zeros(n_out * lanes, np.float32)  # this task's outputs, [row][lane]
        xb = np.zeros(8 * nb_max * lanes, np.float32)  # the column block, [column][lane]
        ctab = np.empty(nb_max * BYTE_ROWS * lanes, np.float32)
        v = np.zeros(stacks * 8 * lb_max * lanes, np.float32)  # (Z_i x)_k, then r_i times it, [i][k][lane]
        ytab = np.empty(stacks * lb_max * BYTE_ROWS * lanes, np.float32)
        colsum = np.empty(lanes, np.float32)
        tsum = np.empty(lanes, np.float32)
        for b in range(n_cols):  # the column tables of block b serve every group row of the task
            nbytes = column_tables(x, t0, tn, col_start[b], col_size[b], xb, colsum, ctab, tag, lowest_bit)
            for a in range(a0, a1):
                g = a * n_cols + b
                rk, m, m0 = rank[a, b], row_size[a], row_start[a]
                kbytes = (rk + 7) // 8
                kbytes += kbytes % 2
                vstride = 8 * lb_max * lanes
                for i in range(stacks):  # v only needs zeros past the rank; clear what the last group used
                    for k in range(i * vstride, i * vstride + 8 * kbytes * lanes):
                        v[k] = 0.0
                # Phase 1, v_ik = (Z_i x)_k, in blocks of code bytes whose tables stay in L1.
                for cb in range(0, nbytes, block_bytes):
                    count = min(block_bytes, nbytes - cb)
                    for i in range(stacks):
                        zrow = (g * stacks + i) * l_max * nb_max + cb
                        for k in range(rk):
                            lut_accumulate(ctab, cb * BYTE_ROWS * lanes, z_flat, zrow + k * nb_max, count, v,
                                           i * vstride + k * lanes, tag)
                for q in range(lanes):
                    tsum[q] = 0.0
                for i in range(stacks):
                    ri, ti = r[a, b, i], t[a, b, i]
                    for k in range(i * vstride, i * vstride + rk * lanes, lanes):
                        for q in range(lanes):
                            tsum[q] += ti * v[k + q]
                            v[k + q] *= ri
                    _nibble_tables(v[i * vstride:], 2 * kbytes, tag, ytab[i * lb_max * BYTE_ROWS * lanes:], lowest_bit)
                # Phase 2, out_j += Σ_i Σ_k Y_i[j, k] r_i v_ik, again in L1-sized blocks of code bytes.
                for j in range(m):
                    rj = rowterm[a, b, j]
                    for q in range(lanes):
                        acc[(m0 - r0 + j) * lanes + q] += rj * colsum[q] + tsum[q]
                for kb in range(0, kbytes, block_bytes):
                    count = min(block_bytes, kbytes - kb)
                    for i in range(stacks):
                        tbase = (i * lb_max + kb) * BYTE_ROWS * lanes
                        for j in range(m):
                            lut_accumulate(ytab, tbase, y_flat, ((g * stacks + i) * m_max + j) * lb_max + kb, count,
                                           acc, (m0 - r0 + j) * lanes, tag)
        for j in range(n_out):
            for q in range(tn):
                out[t0 + q, r0 + j] = acc[j * lanes + q]


_tasks_parallel, _tasks_serial = parallel_and_serial(_tasks)


# Entry points per row width: the width tuple is made inside compiled code, so a call types only
# arrays and ints (typing a tuple argument costs more than a small layer's whole matmul).
@nb.njit(cache=True, nogil=True)
def _run_narrow(parallel, x, out, rows_per_task, z, y, r, t, rowterm, row_start, row_size, col_start, col_size,
                rank, lowest_bit):
    args = (z, y, r, t, rowterm, row_start, row_size, col_start, col_size, rank, lowest_bit)
    if parallel:
        _tasks_parallel(x, out, (0,), rows_per_task, *args)
    else:
        _tasks_serial(x, out, (0,), rows_per_task, *args)


@nb.njit(cache=True, nogil=True)
def _run_wide(parallel, x, out, rows_per_task, z, y, r, t, rowterm, row_start, row_size, col_start, col_size,
              rank, lowest_bit):
    args = (z, y, r, t, rowterm, row_start, row_size, col_start, col_size, rank, lowest_bit)
    tag = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)  # WIDE entries
    if parallel:
        _tasks_parallel(x, out, tag, rows_per_task, *args)
    else:
        _tasks_serial(x, out, tag, rows_per_task, *args)


def bqq_linear_cpu(x: torch.Tensor, w: LayoutTensors, out_features: int) -> torch.Tensor:
    """x (..., N) float32 on the CPU -> x Ŵᵀ (..., M) float32, from the packed bits of ``w`` only."""
    m, n = out_features, x.shape[-1]
    lead = x.shape[:-1]
    x2 = x.detach().reshape(-1, n).contiguous()
    tokens = x2.shape[0]
    out = torch.empty(tokens, m, dtype=torch.float32)
    if tokens == 0:
        return out.reshape(*lead, m)
    lanes = 1 if tokens < NARROW_BELOW else WIDE
    rows = w.rank.shape[0]
    tiles = -(-tokens // lanes)
    threads = nb.get_num_threads()
    # Enough token tiles: each task takes all group rows and builds each column table once.
    # Few tokens: split the group rows instead, so that a single token still uses every thread.
    rows_per_task = rows if tiles >= threads else max(1, -(-rows // threads))
    tasks = tiles * -(-rows // rows_per_task)
    run = _run_narrow if lanes == 1 else _run_wide
    run(tasks > 1 and threads > 1, x2.numpy(), out.numpy(), rows_per_task, *numpy_views(w), LOWEST_BIT)
    return out.reshape(*lead, m)


def kernel_io(x: torch.Tensor, out_features: int) -> tuple[np.ndarray, np.ndarray]:
    """(x as a contiguous (T, N) numpy view, a new (T, M) float32 output array) for a kernel call; cheap
    checks first (each torch call costs microseconds, a one-token matmul a few dozen)."""
    x2 = x.detach()
    if x2.dim() != 2:
        x2 = x2.reshape(-1, x.shape[-1])
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    x2 = x2.numpy()
    return x2, np.empty((x2.shape[0], out_features), np.float32)


def numpy_views(w: tuple[torch.Tensor, ...]) -> tuple[np.ndarray, ...]:
    """numpy views of a layout's tensors (any layout's tensors tuple), made once per layout.

    Ten ``Tensor.numpy()`` calls per call would be a sizeable part of a one-token matmul of a small layer
    (whose fixed cost ``benchmarks/results/inference.md`` gives). The views share memory with the tensors
    (in-place updates show through).
    """
    return per_layout(w, _VIEWS, lambda tensors: tuple(t.numpy() for t in tensors))


def per_layout(w: tuple[torch.Tensor, ...], cache: dict, build) -> tuple[np.ndarray, ...]:
    """``build(w)``, made once per layout and kept in ``cache``: entries are keyed by the first tensor's id
    and dropped when it is freed; a layout whose other tensors were replaced gets a new entry."""
    key = id(w[0])
    cached = cache.get(key)
    if cached is None or not all(map(operator.is_, cached[0], w[1:])):
        if cached is None:
            weakref.finalize(w[0], cache.pop, key, None)
        cached = cache[key] = (w[1:], build(w))  # no reference to w[0]: it can be freed
    return cached[1]


_VIEWS: dict[int, tuple[tuple[torch.Tensor, ...], tuple[np.ndarray, ...]]] = {}  # id(w[0]) -> (w[1:], views)
