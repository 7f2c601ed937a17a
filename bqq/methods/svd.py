"""SVD: rank-r truncated SVD per group with FP32 factors (paper §3.2, method 1).

``bits`` is a memory budget in bits per weight, not a code width: group (m, n) gets rank
r = floor(bits · m n / (32 (m + n))) (capped at min(m, n)), the largest rank whose two FP32 factors
fit in the budget. By Eckart–Young the truncation is the best rank-r approximation of the group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from ..grouping import GroupGrid
from ..quantized import FieldSpec, QuantizedMatrix, grid_ints, progress_bar
from . import register_method


@dataclass(frozen=True)
class SVDConfig:
    """SVD has no settings; the rank follows from ``bits`` and the group shape."""


def rank_for_budget(bits: float, shape: tuple[int, int]) -> int:
    """floor(bits · m n / (32 (m + n))) capped at min(m, n), computed exactly (no float rounding at integers)."""
    m, n = shape
    return min(m, n, math.floor(Fraction(float(bits)) * m * n / (32 * (m + n))))


def ranks_for_budget(bits: float, grid: GroupGrid) -> list[int]:
    """The rank of every group (row-major); ValueError if some group would get rank 0."""
    shapes = grid.group_shapes()
    ranks = [rank_for_budget(bits, s) for s in shapes]
    if min(ranks) == 0:
        m, n = shapes[ranks.index(0)]
        # Smallest groups are the hardest to fit: the budget must cover rank 1 in every group.
        need = max(Fraction(32 * (a + b), a * b) for a, b in shapes)
        raise ValueError(f"bits={bits} gives rank 0 for a {m}x{n} group (rank 1 needs 32(m+n)/(mn) bits per "
                         f"weight); use bits >= {math.ceil(need * 10_000) / 10_000} for rank >= 1 in every group")
    return ranks


def truncated_svd(x: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Best rank-r factors of ``x`` (m, n): (U diag(s) (m, r), V^T (r, n)), float64.

    Each singular pair is flipped so the largest-magnitude entry of its u column is positive, so the
    factors do not depend on the sign choice of the LAPACK driver.
    """
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    u, s, vt = u[:, :rank], s[:rank], vt[:rank]
    flip = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(rank)])
    flip[flip == 0] = 1.0
    return u * (flip * s), vt * flip[:, None]


@register_method("svd")
class SVDMatrix(QuantizedMatrix):
    """A truncated-SVD matrix: per group FP32 factors U·diag(s) (m_g, r_g) and V^T (r_g, n_g).

    Fields, for group (a, b): ``u.{a}.{b}`` float32 (m_g, r_g) and ``v.{a}.{b}`` float32 (r_g, n_g);
    the ranks are in the manifest as an (R, C) grid. Bits per group: 32·r_g·(m_g + n_g), the stored
    factors only. The reference benchmark code adds a constant 128 bits per matrix that corresponds
    to nothing stored here, so its bit counts are 128 higher.
    """

    config_class = SVDConfig
    min_bits = 1e-9  # any positive budget is accepted; too small a one fails with the rank it needs
    max_bits = 32
    integer_bits = False

    def __init__(self, shape, dtype, grid: GroupGrid, bits: float, seed: int, config: SVDConfig,
                 ranks: list[int], u: list[np.ndarray], v: list[np.ndarray]) -> None:
        super().__init__(shape, dtype, grid, float(bits), seed, config)
        self.ranks = ranks
        self.u = u  # per group: float32 (m_g, r_g), singular values folded in
        self.v = v  # per group: float32 (r_g, n_g)

    @classmethod
    def quantize(cls, w, grid, bits, seed, config, progress=None) -> SVDMatrix:
        ranks = ranks_for_budget(bits, grid)
        us, vs = [], []
        groups = progress_bar(grid.split(w), progress=progress, desc=f"svd {w.shape[0]}x{w.shape[1]}", unit="group")
        for x, r in zip(groups, ranks, strict=True):
            u, v = truncated_svd(x, r)
            us.append(u.astype(np.float32))
            vs.append(v.astype(np.float32))
        return cls(w.shape, "float64", grid, bits, seed, config, ranks, us, vs)

    def dequantize_group(self, index: int) -> np.ndarray:
        return self.u[index].astype(np.float64) @ self.v[index].astype(np.float64)

    def group_bits(self, index: int) -> int:
        m, n = self.grid.group_shapes()[index]
        return 32 * self.ranks[index] * (m + n)

    def extra_info(self) -> dict[str, Any]:
        rows, cols = self.grid.grid_shape
        return {"ranks": np.asarray(self.ranks).reshape(rows, cols).tolist()}

    def fields(self) -> dict[str, np.ndarray]:
        out = {}
        for g, (a, b, _, _) in enumerate(self.grid.blocks()):
            out[f"u.{a}.{b}"] = self.u[g]
            out[f"v.{a}.{b}"] = self.v[g]
        return out

    @classmethod
    def field_specs(cls, info: dict[str, Any], grid: GroupGrid) -> dict[str, FieldSpec]:
        ranks = _ranks_from_info(info, grid)
        specs: dict[str, FieldSpec] = {}
        for (a, b, rs, cs), r in zip(grid.blocks(), ranks, strict=True):
            specs[f"u.{a}.{b}"] = ("float32", (rs.stop - rs.start, r))
            specs[f"v.{a}.{b}"] = ("float32", (r, cs.stop - cs.start))
        return specs

    @classmethod
    def from_fields(cls, info, grid, fields) -> SVDMatrix:
        ranks = _ranks_from_info(info, grid)
        us, vs = [], []
        for a, b, _, _ in grid.blocks():
            u, v = fields[f"u.{a}.{b}"], fields[f"v.{a}.{b}"]
            if not (np.isfinite(u).all() and np.isfinite(v).all()):
                raise ValueError(f"group ({a}, {b}) factors contain NaN or Inf")
            us.append(u.copy())
            vs.append(v.copy())
        return cls(tuple(info["shape"]), info["dtype"], grid, info["bits"], info["seed"], SVDConfig(**info["config"]),
                   ranks, us, vs)


def _ranks_from_info(info: dict[str, Any], grid: GroupGrid) -> list[int]:
    """The manifest's ranks, checked to be the ones ``bits`` gives for each group shape."""
    ranks = grid_ints(info["ranks"], grid, "ranks")
    expected = ranks_for_budget(info["bits"], grid)
    if ranks != expected:
        raise ValueError(f"ranks {ranks} disagree with bits={info['bits']} (expected {expected})")
    return ranks


__all__ = ["SVDConfig", "SVDMatrix", "rank_for_budget", "ranks_for_budget", "truncated_svd"]
