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

import threading
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from bqq_kernels.cpu.first_order import gptq_block_parallel, gptq_block_serial

from ..common import check_settings, is_int, is_number, progress_bar
from ..solver.hessian_math import damped, upper_inverse_factor
from .registry import register_method
from .uniform import UQMatrix, group_blocks, pack_code_planes, uniform_grids


@dataclass(frozen=True)
class GPTQConfig:
    """Settings of GPTQ (``bqq.compress(..., method="gptq", hessian=H, name=value)``).

    Attributes:
        grid_points: the clip-range search of each group's grid, as in UQ.
        coarse_step: the search looks at every coarse_step-th candidate, then around the best
            (:func:`bqq.methods.uniform.clip_ranges`): 521 of UQ's 10,000 candidate ranges at 5. The full
            search was a large share of a Llama-2-7B block's GPTQ time (``benchmarks/llm_scale.py --shape
            llama2-7b`` times a block; docs/llm.md, "GPTQ at LLM scale"); configs of version 1 read with 1.
        block_size: columns updated exactly before the rest get one batched update (speed only).
        damping: solve under H + damping·I (H with mean diagonal 1): GPTQ's percdamp, 0.01.
    """

    VERSION: ClassVar[int] = 2
    DEFAULTS_BEFORE: ClassVar[dict[int, dict[str, Any]]] = {1: {"coarse_step": 1}}

    grid_points: int = 100
    coarse_step: int = 5
    block_size: int = 128
    damping: float = 0.01

    def __post_init__(self) -> None:
        check_settings(self, {
            "grid_points": is_int(self.grid_points) and 2 <= self.grid_points <= 10_000,
            "coarse_step": is_int(self.coarse_step) and self.coarse_step >= 1,
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
    single_threaded_blas = False  # its O(m n²) work is BLAS; the compiled part is serial
    bits_meaning = "code width b: b-bit integer codes per weight (GPTQ-rounded), plus a zero point and a step per group"

    @classmethod
    def quantize(cls, w, grid, bits, seed, config, progress=None, first_group=0, hessian=None) -> GPTQMatrix:
        bits = int(bits)
        zero, scale = uniform_grids(w, grid, bits, config.grid_points, progress, "gptq grids", config.coarse_step)
        factor = None if hessian is None else inverse_factor(hessian, config.damping)
        codes = _gptq_codes(w, grid, zero, scale, bits, factor, config.block_size, progress)
        planes: list[np.ndarray] = [np.empty(0, np.uint8)] * len(grid)
        for block in group_blocks(grid):
            for g, p in zip(block.index.tolist(), pack_code_planes(block.gather(codes), bits), strict=True):
                planes[g] = p
        return cls(w.shape, "float64", grid, bits, seed, config, codes=planes, scale=scale, zero=zero)


# Later columns updated at a time after each block (bounds the temporary of the update).
_CHUNK = 1024
# Below this much in-block work (rows x block²) the serial kernel runs: a parallel region costs tens of µs.
PARALLEL_BLOCK_WORK = 1 << 22


def _gptq_codes(w: np.ndarray, grid, zero: np.ndarray, scale: np.ndarray, bits: int, chol: np.ndarray | None,
                block_size: int, progress: bool | None) -> np.ndarray:
    """uint8 (m, n) codes, column by column with GPTQ's error feedback under ``chol``, the upper factor U of
    H⁻¹ = Uᵀ U (n, n) from :func:`inverse_factor` (None: no feedback, round to nearest)."""
    m, n = w.shape
    # Per column block b: every row's grid (lo, step), expanded from the row blocks.
    rows = np.repeat(np.arange(len(grid.row_sizes)), grid.row_sizes)
    cols = np.repeat(np.arange(len(grid.col_sizes)), grid.col_sizes)
    lo = zero.astype(np.float64).reshape(len(grid.row_sizes), -1)[rows]  # (m, C)
    step = scale.astype(np.float64).reshape(len(grid.row_sizes), -1)[rows]
    if chol is None:  # no error feedback: every column rounded as it is
        codes = np.empty((m, n), np.uint8)
        for j in range(n):
            codes[:, j] = encode_rows(w[:, j].astype(np.float64), lo[:, cols[j]], step[:, cols[j]], bits)
        return codes
    codes = np.empty((m, n), np.uint8)
    work = w.astype(np.float64, copy=True)
    # Column j's error, divided by U_jj, moves the later columns by U_j,k.
    errors = np.empty((m, block_size))
    for start in progress_bar(range(0, n, block_size), progress=progress, desc=f"gptq {m}x{n}", unit="block"):
        stop = min(start + block_size, n)
        block_errors = errors[:, :stop - start]
        # The exact part, row by row in compiled code; then one product per chunk for the later columns
        # (GPTQ's lazy batch: the O(m n²) work is BLAS, so a layer runs at GEMM speed).
        kernel = gptq_block_parallel if m * (stop - start) ** 2 >= PARALLEL_BLOCK_WORK else gptq_block_serial
        kernel(work[:, start:stop], chol[start:stop, start:stop], lo, step, cols[start:stop], 2**bits,
               codes[:, start:stop], block_errors)
        for later in range(stop, n, _CHUNK):  # chunks: no (m, n) temporary
            work[:, later:later + _CHUNK] -= block_errors @ chol[start:stop, later:later + _CHUNK]
    return codes


# The factor of the last H solved under, while that very H object lives: the layers of one stage (q, k, v;
# gate, up) read one input, so the model pass hands them one H (bqq.ptq.hessian shares the sums) and
# the O(n³) factorization runs once per stage, not once per layer.
_last_factor: list[tuple[weakref.ref, float, np.ndarray] | None] = [None]
_factor_lock = threading.Lock()


def inverse_factor(hessian: np.ndarray, damping: float) -> np.ndarray:
    """The upper factor U of (H + damping·I)⁻¹ = Uᵀ U (n, n) for a prepared H (n, n), not modified; reused
    while the same H object is solved again."""
    with _factor_lock:
        last = _last_factor[0]
        if last is not None and last[0]() is hessian and last[1] == damping:
            return last[2]
    factor = upper_inverse_factor(damped(hessian, damping))

    def forget(ref: weakref.ref) -> None:  # the H is gone: so is the ~n² memory of its factor
        if _last_factor[0] is not None and _last_factor[0][0] is ref:
            _last_factor[0] = None

    with _factor_lock:
        _last_factor[0] = (weakref.ref(hessian, forget), damping, factor)
    return factor


__all__ = ["GPTQConfig", "GPTQMatrix", "encode_rows"]
