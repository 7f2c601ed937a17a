"""UQ: b-bit uniform quantization per group with a grid-searched clip range (paper App. A.2, Alg. S.1).

Each group stores an integer code k ∈ [0, 2^b) per weight and two FP32 scalars, the zero point ``lo``
and the step ``scale``; a weight is rebuilt as ``lo + k · scale``. The clip range [lo, hi] is the
pair on a ``grid_points`` × ``grid_points`` grid (hi over linspace(mean, max), lo over
linspace(min, mean)) with the smallest group MSE under round-to-nearest with clipping. Every
candidate is evaluated exactly, either from prefix sums over the sorted group (the paper's
O(N² · 2^b · log(m n)), for large groups at few bits) or value by value (O(N² · m n) with exact pruning,
faster for small groups and many bits); all groups of one shape are searched in one compiled call
(:mod:`bqq_kernels.cpu.first_order`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

import bqq_kernels
from bqq_kernels.cpu.first_order import clip_search, encode_uniform

from ..common import check_settings, is_int, progress_bar
from ..format import pack_bits, packed_length, unpack_bits
from ..grouping import GroupGrid
from ..quantized import GroupField, QuantizedMatrix
from .registry import register_method


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


def clip_ranges(x: np.ndarray, bits: int, grid_points: int, coarse: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The (lo, hi) clip range of every group with the smallest squared error on the grid of Alg. S.1.

    Args:
        x: (G, k) values, one group per row (converted to float64).
        bits: code width b (2^b levels lo + j·(hi − lo)/(2^b − 1)).
        grid_points: N; hi runs over linspace(mean, max, N), lo over linspace(min, mean, N).
        coarse: c > 1 searches every c-th candidate of each end, then the (2c + 1)² candidates around the
            best: (N/c)² + (2c + 1)² evaluations instead of N² (the optimum of the full grid when the error
            is unimodal near it; GPTQ uses it, UQ keeps the full search).

    Returns:
        (lo (G,), hi (G,)) float64 with lo <= hi; lo == hi for a constant group. Among equal errors the
        first candidate in (lo, hi) order wins.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"expected a (groups, values) array with values, got shape {x.shape}")
    lo_x, hi_x = x.min(axis=1), x.max(axis=1)
    # Rounding must not push the mean outside [min, max]: then lo <= hi always, and a constant group
    # gets lo = hi = its value (scale 0, zero error). The row means sum in the same (pairwise) order as
    # a single group's x.mean(), so the candidates are the ones a per-group search would take.
    mu = np.minimum(np.maximum(x.mean(axis=1), lo_x), hi_x)
    his = np.linspace(mu, hi_x, grid_points, axis=1)
    los = np.linspace(lo_x, mu, grid_points, axis=1)
    # Sorted by numpy (the kernels need sorted values; numpy's sort is several times numba's).
    xs = np.sort(x, axis=1)
    rows = np.arange(x.shape[0])
    if coarse > 1 and grid_points > 2 * coarse + 1:
        # Every coarse-th candidate first, then every candidate within coarse of the best on both ends.
        pick = np.arange(0, grid_points, coarse)
        best = clip_search(xs, los[:, pick], his[:, pick], mu, 2**bits)
        window = np.arange(2 * coarse + 1)
        lo_idx = np.clip(pick[best[:, 0]] - coarse, 0, grid_points - 1 - 2 * coarse)[:, None] + window
        hi_idx = np.clip(pick[best[:, 1]] - coarse, 0, grid_points - 1 - 2 * coarse)[:, None] + window
        best = clip_search(xs, los[rows[:, None], lo_idx], his[rows[:, None], hi_idx], mu, 2**bits)
        return los[rows, lo_idx[rows, best[:, 0]]], his[rows, hi_idx[rows, best[:, 1]]]
    best = clip_search(xs, los, his, mu, 2**bits)
    return los[rows, best[:, 0]], his[rows, best[:, 1]]


def search_clip_range(x: np.ndarray, bits: int, grid_points: int) -> tuple[float, float]:
    """The (lo, hi) clip range of one group: :func:`clip_ranges` for x (k,) float64 values.

    Returns:
        (lo, hi) with lo <= hi; lo == hi for a constant group.
    """
    lo, hi = clip_ranges(np.reshape(x, (1, -1)), bits, grid_points)
    return float(lo[0]), float(hi[0])


def encode(x: np.ndarray, lo: float, scale: float, bits: int) -> np.ndarray:
    """Nearest-level codes of ``x`` (any shape) for levels lo + j·scale, j < 2^b; ties go down."""
    if scale == 0:
        return np.zeros(x.shape, dtype=np.int64)
    bounds = lo + (np.arange(2**bits - 1) + 0.5) * scale
    return np.searchsorted(bounds, x, side="left")


@dataclass(frozen=True)
class GroupBlock:
    """Groups of one shape that tile a submatrix: grid rows a0 ≤ a < a0 + A by grid columns b0 ≤ b < b0 + B.

    Attributes:
        rows, cols: the submatrix's rows and columns in the full matrix.
        shape: (A, r, B, c): A × B groups of r × c values.
        index: (A·B,) int64 group numbers on the grid (row-major), in block order.
    """

    rows: slice
    cols: slice
    shape: tuple[int, int, int, int]
    index: np.ndarray

    def gather(self, w: np.ndarray) -> np.ndarray:
        """The block's groups of ``w`` (m, n) stacked, (A·B, r, c), contiguous."""
        a, r, b, c = self.shape
        return np.ascontiguousarray(w[self.rows, self.cols].reshape(a, r, b, c).transpose(0, 2, 1, 3)
                                    ).reshape(a * b, r, c)

    def scatter(self, out: np.ndarray, groups: np.ndarray) -> None:
        """Inverse of :meth:`gather`: write ``groups`` (A·B, r, c) into their places in ``out`` (m, n)."""
        a, r, b, c = self.shape
        out[self.rows, self.cols] = groups.reshape(a, b, r, c).transpose(0, 2, 1, 3).reshape(a * r, b * c)

    def stack(self, per_group: list[np.ndarray]) -> np.ndarray:
        """The block's entries of a per-group list of equal-shape arrays, stacked (A·B, ...)."""
        return np.stack([per_group[g] for g in self.index.tolist()])


def group_shape(grid: GroupGrid, index: int) -> tuple[int, int]:
    """(m_g, n_g) of group ``index`` (row-major), in O(1) (``grid.group_shapes()`` lists them all)."""
    a, b = divmod(index, len(grid.col_sizes))
    return grid.row_sizes[a], grid.col_sizes[b]


def _runs(sizes: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """Maximal runs of equal part sizes: (first part, part count, first index, size)."""
    runs: list[tuple[int, int, int, int]] = []
    start = 0
    for part, size in enumerate(sizes):
        if runs and runs[-1][3] == size:
            first, count, offset, _ = runs[-1]
            runs[-1] = (first, count + 1, offset, size)
        else:
            runs.append((part, 1, start, size))
        start += size
    return runs


def group_blocks(grid: GroupGrid) -> list[GroupBlock]:
    """The grid's groups as blocks of equal shape. Balanced grids have at most two part sizes per side (the
    longer parts first), so at most four blocks; any grid works, with one block per pair of runs."""
    cols_total = len(grid.col_sizes)
    blocks = []
    for a0, na, r0, r in _runs(grid.row_sizes):
        for b0, nb, c0, c in _runs(grid.col_sizes):
            index = ((a0 + np.arange(na))[:, None] * cols_total + (b0 + np.arange(nb))[None, :]).ravel()
            blocks.append(GroupBlock(slice(r0, r0 + na * r), slice(c0, c0 + nb * c), (na, r, nb, c), index))
    return blocks


def pack_code_planes(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes (G, r, c) -> packed planes uint8 (G, bits, r, ceil(c/8)), plane j = bit j of every code."""
    shifts = np.arange(bits, dtype=np.uint8).reshape(1, bits, 1, 1)
    return pack_bits(((codes[:, None] >> shifts) & 1).astype(np.bool_))


def uniform_grids(w: np.ndarray, grid: GroupGrid, bits: int, grid_points: int, progress: bool | None = None,
                  label: str = "uq", coarse: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Every group's searched b-bit grid as stored: (zero (G,), scale (G,)) float32, zero = lo and
    scale = (hi − lo)/(2^b − 1) from :func:`clip_ranges` (``coarse`` as there), one compiled call per block
    of equal shape.

    ``w``: (m, n) float64; ``progress``: a bar over the groups (None: only on a terminal).
    """
    zero, scale = np.empty(len(grid), np.float32), np.empty(len(grid), np.float32)
    with progress_bar(total=len(grid), progress=progress, desc=f"{label} {w.shape[0]}x{w.shape[1]}",
                      unit="group") as bar:
        for block in group_blocks(grid):
            x = block.gather(w)
            lo, hi = clip_ranges(x.reshape(len(x), -1), bits, grid_points, coarse)
            zero[block.index], scale[block.index] = lo, (hi - lo) / (2**bits - 1)
            bar.update(len(x))
    return zero, scale


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

    batched_groups = True

    @classmethod
    def quantize(cls, w, grid, bits, seed, config, progress=None, first_group=0) -> UQMatrix:
        bits = int(bits)
        zero, scale = uniform_grids(w, grid, bits, config.grid_points, progress, "uq")
        codes: list[np.ndarray] = [np.empty(0, np.uint8)] * len(grid)
        for block in group_blocks(grid):
            x = block.gather(w)
            # Codes are chosen for the stored FP32 scalars, so they are the nearest stored levels.
            k = encode_uniform(x.reshape(len(x), -1), zero[block.index].astype(np.float64),
                               scale[block.index].astype(np.float64), 2**bits)
            for g, planes in zip(block.index.tolist(), pack_code_planes(k.reshape(x.shape), bits), strict=True):
                codes[g] = planes
        return cls(w.shape, "float64", grid, bits, seed, config, codes=codes, scale=scale, zero=zero)

    def group_codes(self, index: int) -> np.ndarray:
        """Integer codes of group ``index``, uint8 (m_g, n_g)."""
        return _codes_of_planes(unpack_bits(self.codes[index], group_shape(self.grid, index)[1]))

    def dequantize_group(self, index: int) -> np.ndarray:
        return float(self.zero[index]) + self.group_codes(index) * float(self.scale[index])

    def _dequantize64(self) -> np.ndarray:
        # All groups of a block at once; element by element the same operations as dequantize_group.
        out = np.empty(self.shape)
        for block in group_blocks(self.grid):
            codes = _codes_of_planes(unpack_bits(block.stack(self.codes), block.shape[3]), axis=1)
            zero = self.zero[block.index].astype(np.float64)[:, None, None]
            scale = self.scale[block.index].astype(np.float64)[:, None, None]
            block.scatter(out, zero + codes * scale)
        return out

    def group_bits(self, index: int) -> int:
        m, n = group_shape(self.grid, index)
        return self.bits * m * n + 64

    def kernel_layout(self) -> bqq_kernels.PlaneLayout:
        """The code planes laid out for :func:`bqq_kernels.bqq_linear`: code k = Σ_i 2^i P_i, so plane i
        weighs 2^i · scale and the offset is the zero point (x·Ŵᵀ from the bits, no dense weight)."""
        weights = 2.0 ** np.arange(self.bits)
        coef = self.scale.astype(np.float64)[:, None] * weights[None, :]  # exact: powers of two
        return bqq_kernels.build_plane_layout(self.shape, self.grid.row_sizes, self.grid.col_sizes, self.codes,
                                              coef, self.zero)


def _codes_of_planes(planes: np.ndarray, axis: int = 0) -> np.ndarray:
    """uint8 codes from {0,1} planes stacked on ``axis`` (plane j = bit j), that axis removed."""
    planes = np.moveaxis(planes, axis, 0)
    codes = np.zeros(planes.shape[1:], np.uint8)
    for j, plane in enumerate(planes):
        codes |= plane << j
    return codes


__all__ = ["GroupBlock", "UQConfig", "UQMatrix", "clip_ranges", "encode", "group_blocks", "group_shape",
           "pack_code_planes", "search_clip_range", "uniform_grids"]
