"""Triton device helpers shared by the BQQ kernels: packed bits to 0/1 tiles, and a matrix product that
Triton's interpreter computes correctly for bfloat16.

The layout (:mod:`kernels.layout`) pads every group to the largest one with zero bytes, and the pad bits
of a row's last byte are zero, so a tile may read past a group's rows, columns or rank: whatever lies
there multiplies as 0. The masks below only keep loads inside the arrays.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def bit_tile(row_ptr, rows, row_limit, byte0, byte_limit, stride, ROWS: tl.constexpr, COLS: tl.constexpr):
    """(ROWS, COLS) uint8 0/1: bits 8·byte0 ... 8·byte0 + COLS - 1 of the packed rows ``rows`` (ROWS,).

    Row r starts at ``row_ptr + r * stride``; bytes are little bit order (bit s of byte q is element
    8q + s). Rows >= row_limit and bytes >= byte_limit read as zero. COLS is a multiple of 8.
    """
    q = byte0 + tl.arange(0, COLS // 8)
    ok = (rows[:, None] < row_limit) & (q[None, :] < byte_limit)
    packed = tl.load(row_ptr + rows[:, None] * stride + q[None, :], mask=ok, other=0)
    # One byte load serves 8 elements: expand along a new last axis, then merge (q, s) into 8q + s.
    bits = (packed[:, :, None] >> tl.arange(0, 8).to(tl.uint8)[None, None, :]) & 1
    return tl.reshape(bits, (ROWS, COLS))


@triton.jit
def mma(a, b, acc, DTYPE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a·b with a, b rounded to DTYPE, products accumulated in fp32 (tensor cores on a GPU).

    UPCAST: multiply the DTYPE values in fp32 instead (exact for fp16/bf16 values, so the same
    numbers): Triton's interpreter multiplies bfloat16 operands as their raw 16-bit patterns, and turns
    integers into bfloat16 patterns without converting them, so integers go through fp32 first.
    """
    if UPCAST:
        a = a.to(tl.float32).to(DTYPE).to(tl.float32)
        b = b.to(tl.float32).to(DTYPE).to(tl.float32)
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a.to(DTYPE), b.to(DTYPE), acc, input_precision=PRECISION)
