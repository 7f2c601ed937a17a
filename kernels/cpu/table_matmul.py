"""Decode kernels (a few tokens): x·Ŵᵀ with register tables looked up by byte shuffles (T-MAC's method).

Every product here is "binary matrix × vector": a bit plane of UQ/GPTQ/BCQ times x, and BQQ's two,
v_i = Z_i x then Y_i (r_i v_i). For each 4 entries of the vector a 16-entry table holds every subset
sum, quantized to 16 bits with one scale per table block (:data:`kernels.cpu.simd.TABLE_BIAS`); a
code byte's two nibbles index two tables, and one byte shuffle looks up TILE_ROWS weight rows at once
(:func:`kernels.cpu.simd.table_dot`). The integer sums of a block are exact; the only rounding is
the table's, once per entry.

The codes are read in **row tiles**: for TILE_ROWS consecutive rows, code byte c of every row, then
byte c + 1 (:func:`tile_rows`). The tiles are a second copy of the codes, made once per layout on the
first decode call (:func:`decode_arrays`).

Parallel tasks are row tiles (planes) or group rows (BQQ); each output is computed by one task in a
fixed order, and the tables of a token depend on that token only, so results are bit-identical for
any number of threads and any batch composition.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch

from ..layout import LayoutTensors, PlaneTensors
from .bqq_matmul import kernel_io, numpy_views, per_layout
from .builds import parallel_and_serial
from .simd import (
    MAX_TABLE_CALL,
    SHUFFLE_KINDS,
    TABLE_BYTES,
    TILE_ROWS,
    chunk_abs_max,
    host_shuffle,
    quantize_chunks,
    table_dot,
)

# Largest rounded table value: a little under 32767, so that float rounding never passes 65535.
TABLE_PEAK = 32766.0
SMALLEST_SCALE = np.float32(1e-30)
NATIVE = SHUFFLE_KINDS[host_shuffle()]
NATIVE_TAG = (0,) * NATIVE  # the shuffle kind as a tuple's length: see kernels.cpu.simd
# Serial below this many code bytes per call (a thread start costs more than a small layer's lookups).
PARALLEL_BYTES = 1 << 17


def tile_rows(packed: np.ndarray) -> np.ndarray:
    """uint8 (..., rows, nbytes) -> (..., ceil(rows / TILE_ROWS), nbytes, TILE_ROWS): code byte c of
    TILE_ROWS consecutive rows side by side (rows past the end are zero bytes)."""
    *lead, rows, nbytes = packed.shape
    tiles = -(-rows // TILE_ROWS)
    padded = np.zeros((*lead, tiles * TILE_ROWS, nbytes), np.uint8)
    padded[..., :rows, :] = packed
    out = padded.reshape(*lead, tiles, TILE_ROWS, nbytes).swapaxes(-1, -2)
    return np.ascontiguousarray(out)


@nb.njit(cache=True, nogil=True, inline="always")
def chunk_peak(src, s0, ncols):
    """max over 4-entry chunks q of Σ_k |src[s0 + 4q + k]| (ncols entries): the largest |subset sum| any
    table entry can take; inf if an entry is NaN or infinite (the tables' scale, and so the result, is
    then inf or NaN, as a dense product's would be)."""
    quads = ncols // 16
    peak, total = chunk_abs_max(src, s0, quads)
    for q in range(4 * quads, (ncols + 3) // 4):
        part = np.float32(0.0)
        for k in range(4 * q, min(4 * q + 4, ncols)):
            part += abs(src[s0 + k])
        peak = max(peak, part)
        total += part
    return peak if np.isfinite(total) else np.float32(np.inf)


@nb.njit(cache=True, nogil=True, inline="always")
def table_scale(peak):
    """The table scale for a block whose largest |subset sum| is ``peak``; never below SMALLEST_SCALE, so
    that 1 / scale stays finite (sums that small round to zero, an absolute error below 1e-25)."""
    return max(np.float32(peak / TABLE_PEAK), SMALLEST_SCALE) if peak > 0 else np.float32(1.0)


@nb.njit(cache=True, nogil=True, inline="always")
def fill_tables(src, s0, ncols, nbytes, scale, dst, d0, pad):
    """The tables of src[s0:s0 + ncols] (zeros past ncols) for ``nbytes`` >= ceil(ncols / 8) code bytes at
    dst[d0:]: entry e of 4-entry chunk q is round(Σ_{k in e} src[4q + k] / scale) + TABLE_BIAS (layout:
    :func:`kernels.cpu.simd.table_dot`). ``pad``: float32 scratch of 8."""
    inv = np.float32(1.0) / scale
    full = ncols // 4
    quantize_chunks(src, s0, full, inv, dst, d0, 0)
    for k in range(8):
        pad[k] = 0.0
    for k in range(4 * full, ncols):
        pad[k - 4 * full] = src[s0 + k]
    done = full
    if ncols % 4:
        quantize_chunks(pad, 0, 1, inv, dst, d0, done)
        done += 1
        for k in range(4):
            pad[k] = 0.0
    while done < 2 * nbytes:  # chunks past the end: every entry is the bias (zero)
        count = min(2, 2 * nbytes - done)
        quantize_chunks(pad, 0, count, inv, dst, d0, done)
        done += count


@nb.njit(cache=True, nogil=True)
def _column_tables(x, col_start, col_size, nb_max):
    """Per token and column block: tables (T, C, nb_max·TABLE_BYTES), scales (T, C, sub-blocks), sums of x
    (T, C). A block wider than MAX_TABLE_CALL code bytes gets a table scale per MAX_TABLE_CALL bytes."""
    tokens, n_cols = x.shape[0], len(col_start)
    subs = (nb_max + MAX_TABLE_CALL - 1) // MAX_TABLE_CALL
    tables = np.empty((tokens, n_cols, nb_max * TABLE_BYTES), np.uint8)
    scales = np.ones((tokens, n_cols, subs), np.float32)
    colsum = np.zeros((tokens, n_cols), np.float32)
    pad = np.empty(8, np.float32)
    lanes = np.empty(16, np.float32)
    for t in range(tokens):
        row = x[t]
        for b in range(n_cols):
            c0, width = col_start[b], col_size[b]
            nbytes = (width + 7) // 8
            for s in range(0, nbytes, MAX_TABLE_CALL):
                cols = min(width - 8 * s, 8 * MAX_TABLE_CALL)
                scale = table_scale(chunk_peak(row, c0 + 8 * s, cols))
                scales[t, b, s // MAX_TABLE_CALL] = scale
                fill_tables(row, c0 + 8 * s, cols, min(MAX_TABLE_CALL, nbytes - s), scale, tables[t, b],
                            s * TABLE_BYTES, pad)
            colsum[t, b] = _sum(row, c0, width, lanes)
    return tables, scales, colsum


@nb.njit(cache=True, nogil=True, inline="always")
def _sum(src, s0, count, lanes):
    """Σ src[s0:s0 + count] in a fixed order that vectorizes: 16 partial sums, then those in order."""
    for q in range(16):
        lanes[q] = 0.0
    for k0 in range(0, count - count % 16, 16):
        for q in range(16):
            lanes[q] += src[s0 + k0 + q]
    total = np.float32(0.0)
    for q in range(16):
        total += lanes[q]
    for k in range(count - count % 16, count):
        total += src[s0 + k]
    return total


@nb.njit(cache=True, nogil=True, inline="always")
def _tile_dot(codes, code_base, nbytes, tables, table_base, scales, weights, weight_base, out, out_base, kind):
    """out[out_base:+TILE_ROWS] += weights[weight_base:+TILE_ROWS] · (the tile's first ``nbytes`` code bytes
    against the tables, dequantized): one table_dot per MAX_TABLE_CALL bytes, each with its own scale."""
    for s in range(0, nbytes, MAX_TABLE_CALL):
        table_dot(codes, code_base + s * TILE_ROWS, min(MAX_TABLE_CALL, nbytes - s), tables,
                  table_base + s * TABLE_BYTES, scales[s // MAX_TABLE_CALL], weights, weight_base, out, out_base, kind)


def _plane_tasks(x, out, kind, tiles, coef, offset, col_start, col_size):
    """out (T, M) = x (T, N) Ŵᵀ for a PlaneLayout: tiles uint8 (MT, C, B, NB, TILE_ROWS), coef float32
    (C, B, MT·TILE_ROWS), offset (C, MT·TILE_ROWS) (:func:`decode_arrays`); one task per row tile."""
    n_tiles, n_cols, count, nb_max, _ = tiles.shape
    tokens, m = x.shape[0], out.shape[1]
    tables, scales, colsum = _column_tables(x, col_start, col_size, nb_max)
    flat_tables, flat_codes = tables.reshape(-1), tiles.reshape(-1)
    flat_coef = coef.reshape(-1)
    rows_padded = n_tiles * TILE_ROWS
    for tile in nb.prange(n_tiles):
        j0 = tile * TILE_ROWS
        acc = np.zeros(tokens * TILE_ROWS, np.float32)
        for b in range(n_cols):
            nbytes = (col_size[b] + 7) // 8
            for i in range(count):
                code_base = ((tile * n_cols + b) * count + i) * nb_max * TILE_ROWS
                for t in range(tokens):
                    _tile_dot(flat_codes, code_base, nbytes, flat_tables, (t * n_cols + b) * nb_max * TABLE_BYTES,
                              scales[t, b], flat_coef, (b * count + i) * rows_padded + j0, acc, t * TILE_ROWS, kind)
            for t in range(tokens):
                cs = colsum[t, b]
                for k in range(TILE_ROWS):
                    acc[t * TILE_ROWS + k] += offset[b, j0 + k] * cs
        for t in range(tokens):
            for k in range(min(TILE_ROWS, m - j0)):
                out[t, j0 + k] = acc[t * TILE_ROWS + k]


def _bqq_tasks(x, out, kind, ztiles, ytiles, r, t_scale, rowterm, row_start, row_size, col_start, col_size, rank):
    """out (T, M) = x (T, N) Ŵᵀ for a BQQLayout: ztiles uint8 (R, C, P, LT, NB, TILE_ROWS) (rows k of Z_i),
    ytiles uint8 (R, C, MT, P, LB, TILE_ROWS) (rows j of Y_i, the stacks of a row tile side by side)
    (:func:`decode_arrays`); one task per group row.

    Phase 2 looks up all stacks of a row tile in one pass: the tables of r_i v_i for every i share one
    scale (set by the largest of them)."""
    n_rows, n_cols, stacks, l_tiles, nb_max, _ = ztiles.shape
    m_tiles, lb_max = ytiles.shape[2], ytiles.shape[4]
    tokens = x.shape[0]
    tables, scales, colsum = _column_tables(x, col_start, col_size, nb_max)
    flat_tables, flat_z, flat_y = tables.reshape(-1), ztiles.reshape(-1), ytiles.reshape(-1)
    z_tile, y_tile = nb_max * TILE_ROWS, stacks * lb_max * TILE_ROWS
    ones = np.ones(TILE_ROWS, np.float32)
    for a in nb.prange(n_rows):
        m = row_size[a]
        acc = np.zeros(tokens * m_tiles * TILE_ROWS, np.float32)
        v = np.zeros((stacks, l_tiles * TILE_ROWS), np.float32)  # Z_i x, then r_i Z_i x
        ytab = np.empty(stacks * lb_max * TABLE_BYTES, np.uint8)
        yscale = np.empty((stacks * lb_max + MAX_TABLE_CALL - 1) // MAX_TABLE_CALL, np.float32)
        pad = np.empty(8, np.float32)
        lanes = np.empty(16, np.float32)
        for b in range(n_cols):
            rk = rank[a, b]
            nbytes = (col_size[b] + 7) // 8
            ktiles = (rk + TILE_ROWS - 1) // TILE_ROWS
            g = a * n_cols + b
            for t in range(tokens):
                tsum = np.float32(0.0)
                peak = np.float32(0.0)
                for i in range(stacks):  # phase 1: v_i = Z_i x_b (rows past the rank are zero bytes: v = 0)
                    vi = v[i]
                    for k in range(ktiles * TILE_ROWS):
                        vi[k] = 0.0
                    for lt in range(ktiles):
                        _tile_dot(flat_z, ((g * stacks + i) * l_tiles + lt) * z_tile, nbytes, flat_tables,
                                  (t * n_cols + b) * nb_max * TABLE_BYTES, scales[t, b], ones, 0, vi, lt * TILE_ROWS,
                                  kind)
                    tsum += t_scale[a, b, i] * _sum(vi, 0, rk, lanes)
                    ri = r[a, b, i]
                    for k in range(ktiles * TILE_ROWS):
                        vi[k] *= ri
                    peak = max(peak, chunk_peak(vi, 0, rk))
                scale = table_scale(peak)
                for i in range(stacks):
                    fill_tables(v[i], 0, rk, lb_max, scale, ytab, i * lb_max * TABLE_BYTES, pad)
                yscale[:] = scale
                base = t * m_tiles * TILE_ROWS
                for mt in range((m + TILE_ROWS - 1) // TILE_ROWS):  # phase 2: Σ_i Y_i (r_i v_i)
                    _tile_dot(flat_y, (g * m_tiles + mt) * y_tile, stacks * lb_max, ytab, 0, yscale, ones, 0, acc,
                              base + mt * TILE_ROWS, kind)
                cs = colsum[t, b]
                for j in range(m):
                    acc[base + j] += rowterm[a, b, j] * cs + tsum
        r0 = row_start[a]
        for t in range(tokens):
            for j in range(m):
                out[t, r0 + j] = acc[t * m_tiles * TILE_ROWS + j]


_plane_parallel, _plane_serial = parallel_and_serial(_plane_tasks)
_bqq_parallel, _bqq_serial = parallel_and_serial(_bqq_tasks)


# Entry points per shuffle kind: the kind tuple is made inside compiled code (typing a tuple argument
# costs more than a small layer's whole matmul), the native one from this CPU's features.
@nb.njit(cache=True, nogil=True)
def _plane_native(parallel, x, out, tiles, coef, offset, col_start, col_size):
    if parallel:
        _plane_parallel(x, out, NATIVE_TAG, tiles, coef, offset, col_start, col_size)
    else:
        _plane_serial(x, out, NATIVE_TAG, tiles, coef, offset, col_start, col_size)


@nb.njit(cache=True, nogil=True)
def _plane_generic(parallel, x, out, tiles, coef, offset, col_start, col_size):
    if parallel:
        _plane_parallel(x, out, (0,), tiles, coef, offset, col_start, col_size)
    else:
        _plane_serial(x, out, (0,), tiles, coef, offset, col_start, col_size)


@nb.njit(cache=True, nogil=True)
def _bqq_native(parallel, x, out, ztiles, ytiles, r, t, rowterm, row_start, row_size, col_start, col_size, rank):
    args = (ztiles, ytiles, r, t, rowterm, row_start, row_size, col_start, col_size, rank)
    if parallel:
        _bqq_parallel(x, out, NATIVE_TAG, *args)
    else:
        _bqq_serial(x, out, NATIVE_TAG, *args)


@nb.njit(cache=True, nogil=True)
def _bqq_generic(parallel, x, out, ztiles, ytiles, r, t, rowterm, row_start, row_size, col_start, col_size, rank):
    args = (ztiles, ytiles, r, t, rowterm, row_start, row_size, col_start, col_size, rank)
    if parallel:
        _bqq_parallel(x, out, (0,), *args)
    else:
        _bqq_serial(x, out, (0,), *args)


def decode_arrays(w: LayoutTensors | PlaneTensors) -> tuple[np.ndarray, ...]:
    """The arrays the decode kernels read for a layout's tensors, made once per layout
    (:func:`kernels.cpu.bqq_matmul.per_layout`; the tiles and padded scalars are copies).

    Planes: (tiles (MT, C, B, NB, TILE_ROWS), coef (C, B, MT·TILE_ROWS), offset (C, MT·TILE_ROWS), col_start,
    col_size).
    BQQ: (ztiles (R, C, P, LT, NB, TILE_ROWS), ytiles (R, C, MT, P, LB, TILE_ROWS), r, t, rowterm, row_start,
    row_size, col_start, col_size, rank).
    """
    return per_layout(w, _DECODE, _decode_build)


def _decode_build(w: LayoutTensors | PlaneTensors) -> tuple[np.ndarray, ...]:
    views = numpy_views(w)
    if isinstance(w, PlaneTensors):
        planes, coef, offset, *rest = views
        tiles = np.ascontiguousarray(tile_rows(planes).transpose(2, 0, 1, 3, 4))  # a tile's codes in one run
        rows = tiles.shape[0] * TILE_ROWS  # the scalars padded to whole tiles (zeros)
        coef_t = np.zeros((coef.shape[0], coef.shape[2], rows), np.float32)
        coef_t[:, :, :coef.shape[1]] = coef.transpose(0, 2, 1)
        offset_t = np.zeros((offset.shape[0], rows), np.float32)
        offset_t[:, :offset.shape[1]] = offset
        return (tiles, coef_t, offset_t, *rest)
    z, y, *rest = views
    return (tile_rows(z), np.ascontiguousarray(tile_rows(y).transpose(0, 1, 3, 2, 4, 5)), *rest)


_DECODE: dict[int, tuple[tuple[torch.Tensor, ...], tuple[np.ndarray, ...]]] = {}  # id(w[0]) -> (w[1:], arrays)


def plane_linear_tables(x: torch.Tensor, w: PlaneTensors, out_features: int, generic: bool = False) -> torch.Tensor:
    """x (..., N) float32 -> x Ŵᵀ (..., M) float32 with the register-table kernel (bit planes)."""
    x2, out = kernel_io(x, out_features)
    if len(x2):
        arrays = decode_arrays(w)
        parallel = arrays[0].size * len(x2) >= PARALLEL_BYTES and nb.get_num_threads() > 1  # a thread start costs
        (_plane_generic if generic else _plane_native)(parallel, x2, out, *arrays)  # more than a small layer
    return _result(out, x, out_features)


def bqq_linear_tables(x: torch.Tensor, w: LayoutTensors, out_features: int, generic: bool = False) -> torch.Tensor:
    """x (..., N) float32 -> x Ŵᵀ (..., M) float32 with the register-table kernel (BQQ factors)."""
    x2, out = kernel_io(x, out_features)
    if len(x2):
        arrays = decode_arrays(w)
        parallel = (arrays[0].size + arrays[1].size) * len(x2) >= PARALLEL_BYTES and nb.get_num_threads() > 1
        (_bqq_generic if generic else _bqq_native)(parallel, x2, out, *arrays)
    return _result(out, x, out_features)


def _result(out: np.ndarray, x: torch.Tensor, out_features: int) -> torch.Tensor:
    result = torch.from_numpy(out)
    return result if x.dim() == 2 else result.reshape(*x.shape[:-1], out_features)
