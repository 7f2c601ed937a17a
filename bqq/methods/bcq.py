"""BCQ: binary-coding quantization, W ≈ Σ_{i<b} α_i B_i per group with B_i ∈ {±1}^{m×n}.

Following Xu et al. 2018 and the ShiftAddLLM code used by the paper's benchmark (§3.2, method 4):
a greedy start (α_i = mean|R|, B_i = sign(R), R -= α_i B_i) and then alternating refinement, each
round an exact least-squares fit of the b scalars α given the signs, and then the optimal signs
given α (each weight goes to the nearest of the 2^b values Σ α_i s_i). Neither step can increase
the error, and the loop stops as soon as the signs no longer change.

:meth:`BCQMatrix.quantize` solves all groups of one shape in one compiled call
(:func:`bqq_kernels.cpu.first_order.bcq_fit`, each group with its own stop); the per-group functions
below are the reference it follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

import bqq_kernels
from bqq_kernels.cpu.first_order import bcq_fit

from ..common import check_settings, is_int, progress_bar
from ..format import pack_bits, packed_length, unpack_bits
from ..quantized import GroupField, QuantizedMatrix
from .registry import register_method
from .uniform import group_blocks, group_shape


@dataclass(frozen=True)
class BCQConfig:
    """Settings of BCQ (pass them as ``bqq.compress(..., method="bcq", name=value)``).

    Attributes:
        rounds: maximum alternating refinement rounds after the greedy start (0: greedy only).
    """

    VERSION: ClassVar[int] = 1

    rounds: int = 15

    def __post_init__(self) -> None:
        check_settings(self, {"rounds": is_int(self.rounds) and 0 <= self.rounds <= 10_000})


def greedy(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy residual binarization of ``x`` (k,): returns (alpha (bits,), planes uint8 (bits, k), 1 = +1)."""
    alpha = np.empty(bits)
    planes = np.empty((bits, x.size), np.uint8)
    residual = x.astype(np.float64, copy=True)
    for i in range(bits):
        alpha[i] = np.abs(residual).mean()
        planes[i] = residual >= 0  # sign(0) = +1
        residual -= alpha[i] * (2.0 * planes[i] - 1.0)
    return alpha, planes


def fit_alpha(x: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """Least-squares α (bits,) for fixed signs ``planes`` (bits, k).

    Solves the b×b normal equations; lstsq gives the minimum-norm α when planes repeat (singular Gram).
    """
    signs = 2.0 * planes - 1.0
    return np.linalg.lstsq(signs @ signs.T, signs @ x, rcond=None)[0]


def assign_signs(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Optimal planes (bits, k) for fixed α: each entry of ``x`` (k,) takes the nearest Σ α_i s_i."""
    bits = alpha.size
    combos = np.arange(2**bits)
    plane_of = ((combos[None, :] >> np.arange(bits)[:, None]) & 1).astype(np.uint8)  # (bits, 2^b)
    values = alpha @ (2.0 * plane_of - 1.0)  # (2^b,) the representable values
    order = np.argsort(values, kind="stable")
    ranked = values[order]
    # A tie goes to the larger value, so a zero weight keeps sign +1 as in the greedy start.
    best = order[np.searchsorted((ranked[1:] + ranked[:-1]) / 2, x, side="right")]
    return np.take(plane_of, best, axis=1)


def binary_code(x: np.ndarray, bits: int, rounds: int) -> tuple[np.ndarray, np.ndarray]:
    """BCQ of ``x`` (k,): greedy start, then up to ``rounds`` alternating rounds. Returns (alpha, planes)."""
    alpha, planes = greedy(x, bits)
    changed = False
    for _ in range(rounds):
        alpha = fit_alpha(x, planes)
        new = assign_signs(x, alpha)
        changed = not np.array_equal(new, planes)
        if not changed:
            break
        planes = new
    if changed:  # the last round moved the signs: refit α so it is optimal for the kept signs
        alpha = fit_alpha(x, planes)
    return alpha, planes


@register_method("bcq")
class BCQMatrix(QuantizedMatrix):
    """A BCQ-compressed matrix: per group b packed sign planes and b FP32 scales.

    Fields, for group (a, b) of shape (m_g, n_g) on an (R, C) grid: ``signs.{a}.{b}`` uint8
    (bits, m_g, ceil(n_g/8)) packed along the last axis, 1 = +1 and 0 = −1; ``alpha`` float32
    (R, C, bits). Bits per group: b·m_g·n_g + 32·b.
    """

    config_class = BCQConfig
    min_bits = 1
    max_bits = 8
    bits_meaning = "code width b: b sign planes per weight, plus b scales per group"
    group_fields = (
        GroupField("signs", "uint8", lambda g: (g.bits, g.rows, packed_length(g.cols)), packed_bits=lambda g: g.cols),
        GroupField("alpha", "float32", lambda g: (g.bits,), per_group=False),
    )

    batched_groups = True

    @classmethod
    def quantize(cls, w, grid, bits, seed, config, progress=None, first_group=0) -> BCQMatrix:
        bits = int(bits)
        signs: list[np.ndarray] = [np.empty(0, np.uint8)] * len(grid)
        alpha = np.empty((len(grid), bits), np.float32)
        with progress_bar(total=len(grid), progress=progress, desc=f"bcq {w.shape[0]}x{w.shape[1]}",
                          unit="group") as bar:
            for block in group_blocks(grid):
                x = block.gather(w)
                a, planes = bcq_fit(x.reshape(len(x), -1), bits, config.rounds)
                alpha[block.index] = a
                packed = pack_bits(planes.reshape(len(x), bits, *x.shape[1:]).astype(np.bool_))
                for g, p in zip(block.index.tolist(), packed, strict=True):
                    signs[g] = p
                bar.update(len(x))
        return cls(w.shape, "float64", grid, bits, seed, config, signs=signs, alpha=alpha)

    def dequantize_group(self, index: int) -> np.ndarray:
        planes = unpack_bits(self.signs[index], group_shape(self.grid, index)[1])
        out = np.zeros(planes.shape[1:])
        for a, plane in zip(self.alpha[index].astype(np.float64), planes, strict=True):
            out += np.where(plane, a, -a)
        return out

    def _dequantize64(self) -> np.ndarray:
        # All groups of a block at once; element by element the same sums as dequantize_group.
        out = np.empty(self.shape)
        for block in group_blocks(self.grid):
            planes = unpack_bits(block.stack(self.signs), block.shape[3])  # (G, bits, r, c)
            alpha = self.alpha[block.index].astype(np.float64)[:, :, None, None]
            values = np.zeros((len(block.index), *planes.shape[2:]))
            for i in range(planes.shape[1]):
                values += np.where(planes[:, i], alpha[:, i], -alpha[:, i])
            block.scatter(out, values)
        return out

    def group_scalars(self, index: int) -> np.ndarray:
        """α of group ``index``, one per bit."""
        return self.alpha[index].astype(np.float64)

    def set_group_scalars(self, index: int, values: np.ndarray) -> None:
        values = np.asarray(values, np.float64)
        if values.shape != self.alpha[index].shape or not np.isfinite(values).all():
            raise ValueError(f"expected {self.alpha.shape[1]} finite scalars for group {index}, "
                             f"got shape {values.shape}")
        self.alpha[index] = values

    def group_bits(self, index: int) -> int:
        m, n = group_shape(self.grid, index)
        return self.bits * (m * n + 32)

    def kernel_layout(self) -> bqq_kernels.PlaneLayout:
        """The sign planes laid out for :func:`bqq_kernels.bqq_linear`: Σ α_i (2 P_i − 1) = Σ 2α_i P_i − Σ α_i,
        so plane i weighs 2α_i and the offset is −Σ α_i (x·Ŵᵀ from the bits, no dense weight)."""
        alpha = self.alpha.astype(np.float64)
        return bqq_kernels.build_plane_layout(self.shape, self.grid.row_sizes, self.grid.col_sizes, self.signs,
                                              2.0 * alpha, -alpha.sum(axis=1))


__all__ = ["BCQConfig", "BCQMatrix", "assign_signs", "binary_code", "fit_alpha", "greedy"]
