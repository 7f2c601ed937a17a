"""GPTQ with UQ codes: the data-aware baseline (Frantar et al., 2022), stored exactly like ``"uq"``.

Each group keeps the b-bit grid that UQ picks for it (the clip range searched on the original weights,
for all groups at once by :func:`bqq.methods.uniform.clip_ranges`), so the file and the rebuild are
UQ's. What changes is how the codes are chosen: columns are rounded one at a time, in order, and each
column's rounding error is pushed onto the columns not yet rounded so as to minimize the output error
tr((W - Ŵ) H (W - Ŵ)ᵀ), using the upper Cholesky factor of H⁻¹ (GPTQ's "lazy batch" form: exact
updates inside blocks of ``block_size`` columns, one matrix product for the rest). The error flows
across column groups, so the model pass solves a layer as a whole. Without ``hessian`` (a layer
that saw no data) the codes are round-to-nearest, i.e. UQ's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..common import check_settings, is_int, is_number, progress_bar
from ..solver.hessian_math import damped, upper_inverse_factor
from . import register_method
from .uniform import UQMatrix, group_blocks, pack_code_planes, uniform_grids


@dataclass(frozen=True)
class GPTQConfig:
    """Settings of GPTQ (``bqq.compress(..., method="gptq", hessian=H, name=value)``).

    Attributes:
        grid_points: the clip-range search of each group's grid, as in UQ.
        block_size: columns updated exactly before the rest get one batched update (speed only).
        damping: solve under H + damping·I (H with mean diagonal 1): GPTQ's percdamp, 0.01.
    """

    VERSION: ClassVar[int] = 1

    grid_points: int = 100
    block_size: int = 128
    damping: float = 0.01

    def __post_init__(self) -> None:
        check_settings(self, {
            "grid_points": is_int(self.grid_points) and 2 <= self.grid_points <= 10_000,
            "block_size": is_int(self.block_size) and self.block_size >= 1,
            "damping": is_number(self.damping) and 0 < self.damping <= 100,
        })


def encode_rows(x: np.ndarray, lo: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """Nearest-level codes of x (m,) where row i has levels lo[i] + j·scale[i]; ties go down.

    Equals :func:`bqq.methods.uniform.encode` row by row (the same bounds, counted the same way).
    """
    bounds = lo[:, None] + (np.arange(2**bits - 1) + 0.5) * scale[:, None]  # (m, levels - 1)
    codes = (x[:, None] > bounds).sum(axis=1)
    return np.where(scale == 0, 0, codes)


@register_method("gptq")
class GPTQMatrix(UQMatrix):
    """UQ's storage (per group b-bit codes, an FP32 zero point and step) with codes chosen by GPTQ."""

    config_class = GPTQConfig
    output_aware = True
    bits_meaning = "code width b: b-bit integer codes per weight (GPTQ-rounded), plus a zero point and a step per group"

    @classmethod
    def quantize(cls, w, grid, bits, seed, config, progress=None, first_group=0, hessian=None) -> GPTQMatrix:
        bits = int(bits)
        zero, scale = uniform_grids(w, grid, bits, config.grid_points, progress, "gptq grids")
        codes = _gptq_codes(w, grid, zero, scale, bits, None if hessian is None else damped(hessian, config.damping),
                            config.block_size, progress)
        planes: list[np.ndarray] = [np.empty(0, np.uint8)] * len(grid)
        for block in group_blocks(grid):
            for g, p in zip(block.index.tolist(), pack_code_planes(block.gather(codes), bits), strict=True):
                planes[g] = p
        return cls(w.shape, "float64", grid, bits, seed, config, codes=planes, scale=scale, zero=zero)


# Later columns updated at a time after each block (bounds the temporary of the update).
_CHUNK = 1024


def _gptq_codes(w: np.ndarray, grid, zero: np.ndarray, scale: np.ndarray, bits: int, hessian: np.ndarray | None,
                block_size: int, progress: bool | None) -> np.ndarray:
    """uint8 (m, n) codes, column by column with GPTQ's error feedback (none without ``hessian``, the damped
    H (n, n), which is overwritten: its memory holds the factor of H⁻¹)."""
    m, n = w.shape
    # Per column block b: every row's grid (lo, step), expanded from the row blocks.
    rows = np.repeat(np.arange(len(grid.row_sizes)), grid.row_sizes)
    cols = np.repeat(np.arange(len(grid.col_sizes)), grid.col_sizes)
    lo = zero.astype(np.float64).reshape(len(grid.row_sizes), -1)[rows]  # (m, C)
    step = scale.astype(np.float64).reshape(len(grid.row_sizes), -1)[rows]
    codes = np.empty((m, n), np.uint8)
    work = w.astype(np.float64, copy=True)
    # Upper factor U of H⁻¹ = Uᵀ U: column j's error, divided by U_jj, moves the later columns by U_j,k.
    chol = None if hessian is None else upper_inverse_factor(hessian)
    del hessian
    for start in progress_bar(range(0, n, block_size), progress=progress, desc=f"gptq {m}x{n}", unit="block"):
        stop = min(start + block_size, n)
        errors = np.empty((m, stop - start))
        for j in range(start, stop):
            b = cols[j]
            k = encode_rows(work[:, j], lo[:, b], step[:, b], bits)
            codes[:, j] = k
            if chol is None:
                continue
            err = (work[:, j] - (lo[:, b] + k * step[:, b])) / chol[j, j]
            work[:, j + 1:stop] -= np.outer(err, chol[j, j + 1:stop])
            errors[:, j - start] = err
        for later in range(stop, n if chol is not None else stop, _CHUNK):  # chunks: no (m, n) temporary
            work[:, later:later + _CHUNK] -= errors @ chol[start:stop, later:later + _CHUNK]
    return codes


__all__ = ["GPTQConfig", "GPTQMatrix", "encode_rows"]
