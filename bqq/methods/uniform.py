"""UQ: b-bit uniform quantization per group with a grid-searched clip range (paper App. A.2, Alg. S.1).

Each group stores an integer code k ∈ [0, 2^b) per weight and two FP32 scalars, the zero point ``lo``
and the step ``scale``; a weight is rebuilt as ``lo + k · scale``. The clip range [lo, hi] is the
pair on a ``grid_points`` × ``grid_points`` grid (hi over linspace(mean, max), lo over
linspace(min, mean)) with the smallest group MSE under round-to-nearest with clipping. Every
candidate is evaluated exactly from prefix sums over the sorted group, so the search costs
O(N² · 2^b · log(m n)) rather than O(N² · m n).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..common import check_settings, is_int, progress_bar
from ..format import pack_bits, packed_length, unpack_bits
from ..quantized import GroupField, QuantizedMatrix
from . import register_method

# Candidate batches are sized so that the (batch, grid_points, 2^b) temporaries stay near 8 MB each.
_CHUNK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class UQConfig:
    """Settings of uniform quantization (pass them as ``bqq.compress(..., method="uq", name=value)``).

    Attributes:
        grid_points: N, the number of candidates for each end of the clip range (N² pairs in all).
    """

    VERSION: ClassVar[int] = 1

    grid_points: int = 100

    def __post_init__(self) -> None:
        check_settings(self, {"grid_points": is_int(self.grid_points) and 2 <= self.grid_points <= 10_000})


def search_clip_range(x: np.ndarray, bits: int, grid_points: int) -> tuple[float, float]:
    """The (lo, hi) clip range with the smallest squared error on the grid of Alg. S.1.

    Args:
        x: (k,) float64 values of one group.
        bits: code width b (2^b levels lo + j·(hi − lo)/(2^b − 1)).
        grid_points: N; hi runs over linspace(mean, max, N), lo over linspace(min, mean, N).

    Returns:
        (lo, hi) with lo <= hi; lo == hi for a constant group.
    """
    xs = np.sort(x)
    lo_x, hi_x = float(xs[0]), float(xs[-1])
    levels = 2**bits
    # Rounding must not push the mean outside [min, max]: then lo <= hi always, and a constant group
    # gets lo = hi = its value (scale 0, zero error).
    mu = min(max(float(x.mean()), lo_x), hi_x)
    # Errors are accumulated on centred values: S2 − 2 c S1 + n c² then cancels far less.
    centred = xs - mu
    p1 = np.concatenate([[0.0], np.cumsum(centred)])
    p2 = np.concatenate([[0.0], np.cumsum(centred * centred)])
    his = np.linspace(mu, hi_x, grid_points)
    los = np.linspace(lo_x, mu, grid_points)
    k = np.arange(levels, dtype=np.float64)
    chunk = max(1, _CHUNK_ELEMENTS // (grid_points * levels))
    errors = np.empty((grid_points, grid_points))
    for start in range(0, grid_points, chunk):
        lo = los[start:start + chunk, None, None]                    # (c, 1, 1)
        scale = (his[None, :, None] - lo) / (levels - 1)             # (c, N, 1)
        # Level j takes the sorted values in (bound_{j-1}, bound_j]: a contiguous index range.
        bounds = lo + (k[:-1] + 0.5) * scale                         # (c, N, L-1)
        cuts = np.searchsorted(xs, bounds.ravel(), side="right").reshape(bounds.shape)
        zeros = np.zeros((*cuts.shape[:2], 1), dtype=cuts.dtype)
        begin = np.concatenate([zeros, cuts], axis=-1)               # (c, N, L)
        end = np.concatenate([cuts, zeros + xs.size], axis=-1)
        c = lo + k * scale - mu                                      # centred level values
        s1 = p1[end] - p1[begin]
        s2 = p2[end] - p2[begin]
        errors[start:start + chunk] = (s2 - 2 * c * s1 + (end - begin) * c * c).sum(axis=-1)
    i, j = np.unravel_index(np.argmin(errors), errors.shape)
    return float(los[i]), float(his[j])


def encode(x: np.ndarray, lo: float, scale: float, bits: int) -> np.ndarray:
    """Nearest-level codes of ``x`` (any shape) for levels lo + j·scale, j < 2^b; ties go down."""
    if scale == 0:
        return np.zeros(x.shape, dtype=np.int64)
    bounds = lo + (np.arange(2**bits - 1) + 0.5) * scale
    return np.searchsorted(bounds, x, side="left")


@register_method("uq")
class UQMatrix(QuantizedMatrix):
    """A uniformly quantized matrix: per group b-bit codes plus an FP32 zero point and step.

    Fields, for group (a, b) of shape (m_g, n_g) on an (R, C) grid: ``codes.{a}.{b}`` uint8
    (bits, m_g, ceil(n_g/8)), plane j holding bit j of every code, packed along the last axis;
    ``scale`` and ``zero`` float32 (R, C). Bits per group: b·m_g·n_g + 64. A constant group gets
    scale 0 and is rebuilt exactly when its value is representable in FP32.
    """

    config_class = UQConfig
    min_bits = 1
    max_bits = 8
    bits_meaning = "code width b: b-bit integer codes per weight, plus a zero point and a step per group"
    group_fields = (
        GroupField("codes", "uint8", lambda g: (g.bits, g.rows, packed_length(g.cols)), packed_bits=lambda g: g.cols),
        GroupField("scale", "float32", lambda g: (), per_group=False, nonnegative=True),
        GroupField("zero", "float32", lambda g: (), per_group=False),
    )

    @classmethod
    def quantize(cls, w, grid, bits, seed, config, progress=None, first_group=0) -> UQMatrix:
        bits = int(bits)
        codes, scale, zero = [], np.empty(len(grid), np.float32), np.empty(len(grid), np.float32)
        groups = progress_bar(grid.split(w), progress=progress, desc=f"uq {w.shape[0]}x{w.shape[1]}", unit="group")
        for g, x in enumerate(groups):
            lo, hi = search_clip_range(x.ravel(), bits, config.grid_points)
            zero[g], scale[g] = lo, (hi - lo) / (2**bits - 1)
            # Codes are chosen for the stored FP32 scalars, so they are the nearest stored levels.
            k = encode(x, float(zero[g]), float(scale[g]), bits).astype(np.uint8)
            codes.append(pack_bits(np.stack([(k >> j) & 1 for j in range(bits)])))
        return cls(w.shape, "float64", grid, bits, seed, config, codes=codes, scale=scale, zero=zero)

    def group_codes(self, index: int) -> np.ndarray:
        """Integer codes of group ``index``, uint8 (m_g, n_g)."""
        planes = unpack_bits(self.codes[index], self.grid.group_shapes()[index][1])
        codes = np.zeros(planes.shape[1:], np.uint8)
        for j, plane in enumerate(planes):
            codes |= plane << j
        return codes

    def dequantize_group(self, index: int) -> np.ndarray:
        return float(self.zero[index]) + self.group_codes(index) * float(self.scale[index])

    def group_bits(self, index: int) -> int:
        m, n = self.grid.group_shapes()[index]
        return self.bits * m * n + 64


__all__ = ["UQConfig", "UQMatrix", "encode", "search_clip_range"]
