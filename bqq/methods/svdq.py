"""SVDQ: low-rank factors with b-bit uniformly quantized entries (paper §3.2, method 2, "SVD + b-bit UQ").

Per group: the rank-r truncated SVD U S Vᵀ gives the left factor L = U S^½, which is quantized with
b-bit uniform codes (one grid-searched clip range for the whole factor, as in the ``uq`` method).
The right factor is quantized the same way, from two candidates, keeping the one with the lower
error: the least-squares fit to the quantized left factor, R = argmin ‖X − L̂ R‖ (LPLR-SVD, Saha et
al. 2024, the form the reference benchmark code uses at HEAD; it absorbs part of L̂'s rounding
error), and the plain SVD factor S^½ Vᵀ (paper-era "SVD + b-bit UQ"). The refit can spread a few
huge weights into a wide-ranged R that few levels cannot hold (e.g. MiniLM's FFN output matrix,
whose largest entry is over a hundred standard deviations out: at a 1-bit budget the refit's error is
far above the plain factor's, which is minilm-ffn's "SVD + 4-bit UQ" entry in
``benchmarks/results/matrix.md``).

``bits`` is a memory budget in bits per weight: r = floor((bits · m n − 128) / (b (m + n))), capped
at min(m, n), the largest rank whose codes and four FP32 scalars fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import numpy as np

from ..common import check_settings, is_int, progress_bar
from ..format import packed_length
from ..grouping import GroupGrid
from ..quantized import GroupField, QuantizedMatrix
from .codes import dequantize_codes, pack_codes, uniform_codes, unpack_codes
from .registry import register_method
from .svd import truncated_svd

_SCALAR_BITS = 128  # FP32 zero point and step of each of the two factors


@dataclass(frozen=True)
class SVDQConfig:
    """Settings of SVDQ (pass them as ``bqq.compress(..., method="svdq", name=value)``).

    Attributes:
        factor_bits: code width b of the factor entries (1..8).
        grid_points: clip-range grid of the factor quantizer (as ``uq``'s ``grid_points``).
    """

    VERSION: ClassVar[int] = 1

    factor_bits: int = 8
    grid_points: int = 100

    def __post_init__(self) -> None:
        check_settings(self, {"factor_bits": is_int(self.factor_bits) and 1 <= self.factor_bits <= 8,
                              "grid_points": is_int(self.grid_points) and 2 <= self.grid_points <= 10_000})

def rank_for_budget(bits: float, shape: tuple[int, int], factor_bits: int) -> int:
    """floor((bits · m n − 128) / (b (m + n))) capped at min(m, n), computed exactly; 0 if nothing fits."""
    m, n = shape
    free = Fraction(float(bits)) * m * n - _SCALAR_BITS
    return max(0, min(m, n, math.floor(free / (factor_bits * (m + n)))))


def ranks_for_budget(bits: float, grid: GroupGrid, factor_bits: int) -> list[int]:
    """The rank of every group (row-major); ValueError if some group would get rank 0."""
    shapes = grid.group_shapes()
    ranks = [rank_for_budget(bits, s, factor_bits) for s in shapes]
    if min(ranks) == 0:
        m, n = shapes[ranks.index(0)]
        need = max(Fraction(factor_bits * (a + b) + _SCALAR_BITS, a * b) for a, b in shapes)
        raise ValueError(f"bits={bits} gives rank 0 for a {m}x{n} group with {factor_bits}-bit factors; use "
                         f"bits >= {math.ceil(need * 10_000) / 10_000} for rank >= 1 in every group")
    return ranks


@register_method("svdq")
class SVDQMatrix(QuantizedMatrix):
    """Quantized low-rank factors: per group L̂ (m_g, r_g) and R̂ (r_g, n_g) as b-bit codes.

    Fields, for group (a, b) on an (R, C) grid: ``l.{a}.{b}`` uint8 (b, m_g, ceil(r_g/8)) and
    ``r.{a}.{b}`` uint8 (b, r_g, ceil(n_g/8)), plane j holding bit j of every code, packed along the
    last axis; ``scale`` and ``zero`` float32 (R, C, 2), step and lowest level of (L̂, R̂). The ranks
    are in the manifest as an (R, C) grid. Bits per group: b · r_g (m_g + n_g) + 128, the reference
    benchmark code's formula (its 128 bits are the four FP32 scalars stored here).
    """

    config_class = SVDQConfig
    min_bits = 1e-9  # any positive budget is accepted; too small a one fails with the rank it needs
    max_bits = 32
    integer_bits = False
    bits_meaning = "a budget in bits per weight that sets each group's rank r (factor_bits-bit factors)"
    meta_key = meta_attr = "ranks"
    group_fields = (
        GroupField("left", "uint8", lambda g: (g.config.factor_bits, g.rows, packed_length(g.meta)),
                   packed_bits=lambda g: g.meta, key="l"),
        GroupField("right", "uint8", lambda g: (g.config.factor_bits, g.meta, packed_length(g.cols)),
                   packed_bits=lambda g: g.cols, key="r"),
        GroupField("scale", "float32", lambda g: (2,), per_group=False, nonnegative=True),
        GroupField("zero", "float32", lambda g: (2,), per_group=False),
    )

    @classmethod
    def group_meta(cls, shape, bits, config) -> int:
        return rank_for_budget(bits, shape, config.factor_bits)

    @classmethod
    def quantize(cls, w, grid, bits, seed, config, progress=None, first_group=0) -> SVDQMatrix:
        fb, gp = config.factor_bits, config.grid_points
        ranks = ranks_for_budget(bits, grid, fb)
        left, right = [], []
        scale, zero = np.empty((len(grid), 2), np.float32), np.empty((len(grid), 2), np.float32)
        groups = progress_bar(grid.split(w), progress=progress, desc=f"svdq {w.shape[0]}x{w.shape[1]}", unit="group")
        for g, (x, r) in enumerate(zip(groups, ranks, strict=True)):
            us, vt = truncated_svd(x, r)
            s = np.linalg.norm(us, axis=0)
            root = np.sqrt(s)
            lf = us / np.where(root > 0, root, 1.0)  # U S^½ (the columns of U S have norm s)
            lcodes, zero[g, 0], scale[g, 0] = uniform_codes(lf, fb, gp)
            lq = dequantize_codes(lcodes, zero[g, 0], scale[g, 0])
            best = None
            for rf in (np.linalg.lstsq(lq, x, rcond=None)[0], vt * root[:, None]):  # refit first: ties keep it
                codes, z, st = uniform_codes(rf, fb, gp)
                err = float(((lq @ dequantize_codes(codes, z, st) - x) ** 2).sum())
                if best is None or err < best[0]:
                    best = (err, codes, z, st)
            _, rcodes, zero[g, 1], scale[g, 1] = best
            left.append(pack_codes(lcodes, fb))
            right.append(pack_codes(rcodes, fb))
        return cls(w.shape, "float64", grid, float(bits), seed, config, left=left, right=right, scale=scale, zero=zero)

    def factors(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(L̂ (m_g, r_g), R̂ (r_g, n_g)) of group ``index``, float64."""
        n = self.grid.group_shapes()[index][1]
        lf = dequantize_codes(unpack_codes(self.left[index], self.ranks[index]), self.zero[index, 0],
                              self.scale[index, 0])
        rf = dequantize_codes(unpack_codes(self.right[index], n), self.zero[index, 1], self.scale[index, 1])
        return lf, rf

    def dequantize_group(self, index: int) -> np.ndarray:
        lf, rf = self.factors(index)
        return lf @ rf

    def group_bits(self, index: int) -> int:
        m, n = self.grid.group_shapes()[index]
        return self.config.factor_bits * self.ranks[index] * (m + n) + _SCALAR_BITS


__all__ = ["SVDQConfig", "SVDQMatrix", "rank_for_budget", "ranks_for_budget"]
