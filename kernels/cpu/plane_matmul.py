"""x·Ŵᵀ for a first-order layer (UQ, GPTQ, BCQ) straight from its bit planes (numba, multithreaded, fp32).

In column block b, row j of the weight is Σ_i coef_ij P_i[j] + offset_j (:class:`~kernels.layout.PlaneLayout`),
so out_j = Σ_b (Σ_i coef_ij (P_i[j] x_b) + offset_j Σ x_b). Each P_i[j] x_b is a sum of activations
selected by bits, computed with the lookup tables of the BQQ kernel (:mod:`kernels.cpu.bqq_matmul`): a
16-row table per 4 columns of the block holds the sums of x over every subset of them, and a code byte
selects one row of its low-nibble table and one of its high-nibble table. A b-bit code costs b such
binary matvecs; no weight value is ever formed.

A table row is a vector over ``lanes`` tokens (16 for batches, 1 for a few tokens), so every add is a
SIMD add (:mod:`kernels.cpu.simd`). Per row, plane and 16 tokens the work is n/8 pairs of 16-float row
loads, against 16·n multiply-adds of a dense fp32 matmul, and the weight traffic is b·n/8 bytes per row.

Parallel tasks are (token tile, block of rows); every output element is computed by one task in a fixed
order (plane sums over code bytes in blocks of SUM_BLOCK, then coef·sum per plane in plane order), so
results are bit-identical for any number of threads and any batch size.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch

from ..layout import PlaneTensors
from .bqq_matmul import BLOCK_TABLE_BYTES, LOWEST_BIT, NARROW_BELOW, column_tables, kernel_io, numpy_views
from .builds import parallel_and_serial
from .simd import BYTE_ROWS, SUM_BLOCK, axpy8, lut_accumulate


def _tasks(x, out, tag, rows_per_task, planes, coef, offset, col_start, col_size, lowest_bit):
    """out (T, M) = x (T, N) Ŵᵀ; the layout arrays as in :class:`~kernels.layout.PlaneLayout`.

    One task per (tile of ``len(tag)`` tokens, block of ``rows_per_task`` rows); each writes only its own
    outputs.
    """
    lanes = len(tag)  # tokens per table row: a compile-time constant (the tuple's length is in its type)
    n_cols, count, m, nb_max = planes.shape
    tokens = x.shape[0]
    p_flat = planes.reshape(-1)
    n_tiles = (tokens + lanes - 1) // lanes
    # Code bytes per pass, a multiple of SUM_BLOCK: every width sums in the same order (batch invariance).
    block_bytes = max(1, BLOCK_TABLE_BYTES // (BYTE_ROWS * lanes * 4) // SUM_BLOCK) * SUM_BLOCK
    row_blocks = (m + rows_per_task - 1) // rows_per_task
    for task in nb.prange(n_tiles * row_blocks):
        tile = task // row_blocks
        j0 = (task - tile * row_blocks) * rows_per_task
        rows = min(m, j0 + rows_per_task) - j0
        t0 = tile * lanes
        tn = min(lanes, tokens - t0)  # the last tile's missing tokens are zeros in xb
        acc = np.zeros(rows * lanes, np.float32)  # this task's outputs, [row][lane]
        sums = np.empty(rows * count * lanes, np.float32)  # P_i[j] x_b, [row][plane][lane]
        xb = np.zeros(8 * nb_max * lanes, np.float32)  # the column block, [column][lane]
        ctab = np.empty(nb_max * BYTE_ROWS * lanes, np.float32)
        colsum = np.empty(lanes, np.float32)
        for b in range(n_cols):
            nbytes = column_tables(x, t0, tn, col_start[b], col_size[b], xb, colsum, ctab, tag, lowest_bit)
            for k in range(rows * count * lanes):
                sums[k] = 0.0
            # The plane sums, in blocks of code bytes whose tables stay in L1.
            for cb in range(0, nbytes, block_bytes):
                size = min(block_bytes, nbytes - cb)
                for j in range(rows):
                    for i in range(count):
                        code_row = ((b * count + i) * m + j0 + j) * nb_max + cb
                        lut_accumulate(ctab, cb * BYTE_ROWS * lanes, p_flat, code_row, size, sums,
                                       (j * count + i) * lanes, tag)
            for j in range(rows):
                row = j * lanes
                off = offset[b, j0 + j]
                for q in range(lanes):
                    acc[row + q] += off * colsum[q]
                for i in range(count):
                    c = coef[b, j0 + j, i]
                    s = (j * count + i) * lanes
                    for q in range(lanes):
                        acc[row + q] += c * sums[s + q]
        for j in range(rows):
            for q in range(tn):
                out[t0 + q, j0 + j] = acc[j * lanes + q]


_tasks_parallel, _tasks_serial = parallel_and_serial(_tasks)


# Fewest rows per task when the rows are split over threads: each task builds every column table of its
# token tile, so a task must have enough rows to pay for them.
MIN_ROWS_PER_TASK = 64


# Entry points per row width: the width tuple is made inside compiled code, so a call types only arrays
# (as in kernels.cpu.bqq_matmul); the task split is chosen inside too.
@nb.njit(cache=True, nogil=True)
def _split(tokens, m, lanes, threads):
    """(rows per task, run in parallel) for ``tokens`` rows of input in tiles of ``lanes`` on ``threads``."""
    tiles = (tokens + lanes - 1) // lanes
    # Enough token tiles: each task takes all rows and builds each column table once per tile.
    # Few tokens: split the rows instead, so that a single token still uses every thread.
    rows_per_task = m if tiles >= threads else max(MIN_ROWS_PER_TASK, (m + threads - 1) // threads)
    tasks = tiles * ((m + rows_per_task - 1) // rows_per_task)
    return rows_per_task, tasks > 1 and threads > 1


@nb.njit(cache=True, nogil=True)
def _run_narrow(threads, x, out, planes, coef, offset, col_start, col_size, lowest_bit):
    rows_per_task, parallel = _split(x.shape[0], out.shape[1], 1, threads)
    if parallel:
        _tasks_parallel(x, out, (0,), rows_per_task, planes, coef, offset, col_start, col_size, lowest_bit)
    else:
        _tasks_serial(x, out, (0,), rows_per_task, planes, coef, offset, col_start, col_size, lowest_bit)


@nb.njit(cache=True, nogil=True)
def _run_wide(threads, x, out, planes, coef, offset, col_start, col_size, lowest_bit):
    tag = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)  # WIDE entries
    rows_per_task, parallel = _split(x.shape[0], out.shape[1], len(tag), threads)
    if parallel:
        _tasks_parallel(x, out, tag, rows_per_task, planes, coef, offset, col_start, col_size, lowest_bit)
    else:
        _tasks_serial(x, out, tag, rows_per_task, planes, coef, offset, col_start, col_size, lowest_bit)


def plane_linear_cpu(x: torch.Tensor, w: PlaneTensors, out_features: int) -> torch.Tensor:
    """x (..., N) float32 on the CPU -> x Ŵᵀ (..., M) float32, from the bit planes of ``w`` only."""
    x2, out = kernel_io(x, out_features)
    if len(x2):
        run = _run_narrow if len(x2) < NARROW_BELOW else _run_wide
        run(nb.get_num_threads(), x2, out, *numpy_views(w), LOWEST_BIT)
    return torch.from_numpy(out).reshape(*x.shape[:-1], out_features)


# Row 0: eight ones (the offset); row 1 + code: the bits of a code byte as floats, little bit order.
BYTE_BITS = np.array([[1.0] * 8] + [[(code >> k) & 1 for k in range(8)] for code in range(256)], np.float32).ravel()


@nb.njit(cache=True, nogil=True, inline="always")
def _rebuild_row(planes, coef, offset, col_start, col_size, bits, j, row, tail):
    """row (N,) = row j of the dense weight: per code byte, offset + Σ_i coef_i · bits of byte i (8 floats
    of ``bits``), planes in order; a block's last partial byte goes through ``tail`` (8 floats)."""
    n_cols, count = planes.shape[0], planes.shape[1]
    for b in range(n_cols):
        c0, width = col_start[b], col_size[b]
        off = offset[b, j]
        full = width // 8
        for byte in range(full):
            axpy8(row, c0 + 8 * byte, bits, 0, off, True)  # bits[0] is all ones: row = offset
            for i in range(count):
                axpy8(row, c0 + 8 * byte, bits, 8 + 8 * planes[b, i, j, byte], coef[b, j, i], False)
        if width % 8:
            axpy8(tail, 0, bits, 0, off, True)
            for i in range(count):
                axpy8(tail, 0, bits, 8 + 8 * planes[b, i, j, full], coef[b, j, i], False)
            for k in range(width % 8):
                row[c0 + 8 * full + k] = tail[k]


def _rebuild_rows(planes, coef, offset, col_start, col_size, bits, r0, out):
    """out (rows, N) float32 = rows r0.. of the dense weight of a PlaneLayout: W[j, cols_b] =
    offset[b, j] + Σ_i coef[b, j, i] P_i[b, j], the planes added in order (bit-identical for any thread
    count and tiling)."""
    rows = out.shape[0]
    for block in nb.prange((rows + 15) // 16):
        tail = np.empty(8, np.float32)
        for jj in range(16 * block, min(rows, 16 * block + 16)):
            _rebuild_row(planes, coef, offset, col_start, col_size, bits, r0 + jj, out[jj], tail)


_rebuild_parallel, _rebuild_serial = parallel_and_serial(_rebuild_rows)


def plane_rows_into(w: PlaneTensors, start: int, out: np.ndarray) -> None:
    """out (rows, N) float32 = rows start.. of the weight of bit planes ``w``, rebuilt by a multithreaded
    numba kernel (the float32 twin of the reference's float64 :func:`~kernels.reference.dequantize_planes`)."""
    (_rebuild_parallel if nb.get_num_threads() > 1 else _rebuild_serial)(*numpy_views(w), BYTE_BITS, start, out)
