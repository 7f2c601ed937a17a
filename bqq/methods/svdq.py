"""SVDQ: low-rank factors with b-bit uniformly quantized entries (paper §3.2, method 2, "SVD + b-bit UQ").

Per group: the rank-r truncated SVD U S Vᵀ gives the left factor L = U S^½, which is quantized with
b-bit uniform codes (one grid-searched clip range for the whole factor, as in the ``uq`` method).
The right factor is quantized the same way, from two candidates, keeping the one with the lower
error: the least-squares fit to the quantized left factor, R = argmin ‖X − L̂ R‖ (LPLR-SVD, Saha et
al. 2024, the form the reference benchmark code uses at HEAD; it absorbs part of L̂'s rounding
error), and the plain SVD factor S^½ Vᵀ (paper-era "SVD + b-bit UQ"). The refit can spread a few
huge weights into a wide-ranged R that few levels cannot hold (e.g. MiniLM's FFN output matrix,
whose largest entry is 175 standard deviations: MSE 0.95 refitted against 0.59 plain at 1 bit).

``bits`` is a memory budget in bits per weight: r = floor((bits · m n − 128) / (b (m + n))), capped
at min(m, n), the largest rank whose codes and four FP32 scalars fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from ..format import checked_planes, packed_length
from ..grouping import GroupGrid
from ..quantized import FieldSpec, QuantizedMatrix, grid_ints, progress_bar
from . import register_method
from .codes import dequantize_codes, pack_codes, uniform_codes, unpack_codes
from .svd import truncated_svd

_SCALAR_BITS = 128  # FP32 zero point and step of each of the two factors


@dataclass(frozen=True)
class SVDQConfig:
    """Settings of SVDQ (pass them as ``bqq.compress(..., method="svdq", name=value)``).

    Attributes:
        factor_bits: code width b of the factor entries (1..8).
        grid_points: clip-range grid of the factor quantizer (as ``uq``'s ``grid_points``).
    """

    factor_bits: int = 8
    grid_points: int = 100

    def __post_init__(self) -> None:
        fb, gp = self.factor_bits, self.grid_points
        bad = []
        if isinstance(fb, bool) or not isinstance(fb, int) or not 1 <= fb <= 8:
            bad.append(f"factor_bits={fb!r} must be an integer in [1, 8]")
        if isinstance(gp, bool) or not isinstance(gp, int) or not 2 <= gp <= 10_000:
            bad.append(f"grid_points={gp!r} must be an integer in [2, 10000]")
        if bad:
            raise ValueError(f"invalid SVDQ settings: {'; '.join(bad)} (see bqq.methods.svdq.SVDQConfig)")


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

    def __init__(self, shape, dtype, grid: GroupGrid, bits: float, seed: int, config: SVDQConfig,
                 ranks: list[int], left: list[np.ndarray], right: list[np.ndarray], scale: np.ndarray,
                 zero: np.ndarray) -> None:
        super().__init__(shape, dtype, grid, float(bits), seed, config)
        self.ranks = ranks
        self.left = left    # per group: packed planes (b, m_g, ceil(r_g/8))
        self.right = right  # per group: packed planes (b, r_g, ceil(n_g/8))
        self.scale = scale  # (G, 2) float32
        self.zero = zero    # (G, 2) float32

    @classmethod
    def quantize(cls, w, grid, bits, seed, config, progress=None) -> SVDQMatrix:
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
        return cls(w.shape, "float64", grid, bits, seed, config, ranks, left, right, scale, zero)

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

    def extra_info(self) -> dict[str, Any]:
        rows, cols = self.grid.grid_shape
        return {"ranks": np.asarray(self.ranks).reshape(rows, cols).tolist()}

    def fields(self) -> dict[str, np.ndarray]:
        rows, cols = self.grid.grid_shape
        out = {"scale": self.scale.reshape(rows, cols, 2), "zero": self.zero.reshape(rows, cols, 2)}
        for g, (a, b, _, _) in enumerate(self.grid.blocks()):
            out[f"l.{a}.{b}"] = self.left[g]
            out[f"r.{a}.{b}"] = self.right[g]
        return out

    @classmethod
    def field_specs(cls, info: dict[str, Any], grid: GroupGrid) -> dict[str, FieldSpec]:
        fb = SVDQConfig(**info["config"]).factor_bits
        ranks = _ranks_from_info(info, grid, fb)
        specs: dict[str, FieldSpec] = {"scale": ("float32", (*grid.grid_shape, 2)),
                                        "zero": ("float32", (*grid.grid_shape, 2))}
        for (a, b, rs, cs), r in zip(grid.blocks(), ranks, strict=True):
            specs[f"l.{a}.{b}"] = ("uint8", (fb, rs.stop - rs.start, packed_length(r)))
            specs[f"r.{a}.{b}"] = ("uint8", (fb, r, packed_length(cs.stop - cs.start)))
        return specs

    @classmethod
    def from_fields(cls, info, grid, fields) -> SVDQMatrix:
        config = SVDQConfig(**info["config"])
        ranks = _ranks_from_info(info, grid, config.factor_bits)
        scale = fields["scale"].reshape(len(grid), 2).copy()
        zero = fields["zero"].reshape(len(grid), 2).copy()
        if not (np.isfinite(scale).all() and np.isfinite(zero).all()):
            raise ValueError("scale or zero contains NaN or Inf")
        if (scale < 0).any():
            raise ValueError("scale must be >= 0")
        left, right = [], []
        for (a, b, _, cs), r in zip(grid.blocks(), ranks, strict=True):
            left.append(checked_planes(fields[f"l.{a}.{b}"], r, f"left factor of group ({a}, {b})"))
            right.append(checked_planes(fields[f"r.{a}.{b}"], cs.stop - cs.start, f"right factor of group ({a}, {b})"))
        return cls(tuple(info["shape"]), info["dtype"], grid, info["bits"], info["seed"], config, ranks, left, right,
                   scale, zero)


def _ranks_from_info(info: dict[str, Any], grid: GroupGrid, factor_bits: int) -> list[int]:
    """The manifest's ranks, checked to be the ones ``bits`` gives for each group shape."""
    ranks = grid_ints(info["ranks"], grid, "ranks")
    expected = ranks_for_budget(info["bits"], grid, factor_bits)
    if ranks != expected:
        raise ValueError(f"ranks {ranks} disagree with bits={info['bits']} (expected {expected})")
    return ranks


__all__ = ["SVDQConfig", "SVDQMatrix", "rank_for_budget", "ranks_for_budget"]
