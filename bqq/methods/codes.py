"""Shared helpers for methods that store b-bit uniform codes of some of their arrays.

Uniform quantization itself is :mod:`bqq.methods.uniform` (grid-searched clip range, nearest-level
codes); these helpers apply it to a whole array (centroids, low-rank factors, per-chunk scales) with
one FP32 zero point and one FP32 step, and store the codes as packed bit planes with
:func:`bqq.format.pack_bits` (plane j holds bit j of every code, exactly like the ``uq`` method).
"""

from __future__ import annotations

import numpy as np

from ..format import pack_bits, unpack_bits
from .uniform import encode, search_clip_range


def uniform_codes(x: np.ndarray, bits: int, grid_points: int) -> tuple[np.ndarray, np.float32, np.float32]:
    """b-bit uniform codes of ``x`` (any shape) with one clip range searched as in the ``uq`` method.

    Returns:
        (codes uint8 of x's shape, zero float32, step float32); x ≈ zero + codes · step. The codes are
        the nearest levels of the stored FP32 scalars.
    """
    lo, hi = search_clip_range(np.asarray(x, np.float64).ravel(), bits, grid_points)
    zero = np.float32(lo)
    step = np.float32((hi - lo) / (2**bits - 1))
    codes = encode(np.asarray(x, np.float64), float(zero), float(step), bits).astype(np.uint8)
    return codes, zero, step


def dequantize_codes(codes: np.ndarray, zero: float, step: float) -> np.ndarray:
    """float64 values zero + codes · step."""
    return float(zero) + codes.astype(np.float64) * float(step)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes (..., k) -> packed planes uint8 (bits, ..., ceil(k/8)); plane j = bit j of every code."""
    return pack_bits(np.stack([(codes >> j) & 1 for j in range(bits)]) if bits else
                     np.zeros((0, *codes.shape), np.uint8))


def unpack_codes(packed: np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: packed planes (bits, ..., ceil(count/8)) -> codes (..., count).

    Codes are returned as uint8 for up to 8 planes and as int64 above that.
    """
    planes = unpack_bits(packed, count)
    codes = np.zeros(planes.shape[1:], np.uint8 if planes.shape[0] <= 8 else np.int64)
    for j, plane in enumerate(planes):
        codes |= plane.astype(codes.dtype) << j
    return codes


__all__ = ["dequantize_codes", "pack_codes", "uniform_codes", "unpack_codes"]
