"""The CPU backends of the linear ops: which kernel runs a call, chosen per call by its token count.

Backends (``bqq_linear(..., backend=NAME)``; :mod:`kernels.dispatch` registers them):

* ``numba`` (default): the path the switch points below pick for the call's token count;
* ``numba-table``: register tables looked up with byte shuffles (:mod:`kernels.cpu.table_matmul`), the
  decode path; 16-bit tables, so results differ from the exact path by the tables' rounding;
* ``numba-table-generic``: the same kernel with the shuffle emulated element by element (any CPU; what
  a CPU without SSSE3/AVX2/AVX-512 would run), bit-identical to ``numba-table``;
* ``numba-exact``: float32 tables in memory (:mod:`kernels.cpu.bqq_matmul`, :mod:`kernels.cpu.plane_matmul`),
  exact up to float32 summation order;
* ``numba-rebuild`` (bit planes): rebuild row tiles of W in float32, then a dense matmul per tile.

The switch points are measured by ``python -m benchmarks.inference --sweep`` (results in
``benchmarks/results/inference.md``); the table path's accuracy against the exact one is measured there too.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from ..layout import LayoutTensors, PlaneTensors
from .bqq_matmul import bqq_linear_cpu
from .plane_matmul import plane_linear_cpu, plane_rows_into
from .table_matmul import bqq_linear_tables, plane_linear_tables

# Token counts (rows of x) below which the table kernels run, read off the sweep in
# benchmarks/results/inference.md ("Paths by token count"): BQQ's table path wins at few tokens on both
# swept shapes and is level with the exact one beyond; for bit planes the tables win up to the sweep's
# 128-token row and the rebuild from its 197-token row on 4096x4096 (the exact path never wins there, so
# above the tables bit planes are rebuilt).
BQQ_TABLE_BELOW = 16
PLANE_TABLE_BELOW = 160
REBUILD_TILE_ROWS = 512  # rows of W rebuilt per dense matmul: a tile stays in L2/L3, no page faults

_WORKSPACE = threading.local()  # per thread: the float32 buffer of one rebuilt tile


def _tokens(x: torch.Tensor) -> int:
    return x.numel() // x.shape[-1] if x.shape[-1] else 0


def bqq_linear_auto(x: torch.Tensor, w: LayoutTensors, out_features: int) -> torch.Tensor:
    """x (..., N) float32 -> x Ŵᵀ (..., M): the table kernel for a few tokens, the exact one for more."""
    if _tokens(x) < BQQ_TABLE_BELOW:
        return bqq_linear_tables(x, w, out_features)
    return bqq_linear_cpu(x, w, out_features)


def plane_linear_auto(x: torch.Tensor, w: PlaneTensors, out_features: int) -> torch.Tensor:
    """x (..., N) float32 -> x Ŵᵀ (..., M): table kernel for a few tokens, rebuild + matmul for many."""
    if _tokens(x) < PLANE_TABLE_BELOW:
        return plane_linear_tables(x, w, out_features)
    return plane_linear_rebuild(x, w, out_features)


def plane_linear_rebuild(x: torch.Tensor, w: PlaneTensors, out_features: int) -> torch.Tensor:
    """x (..., N) float32 -> x Ŵᵀ (..., M): W rebuilt in float32 REBUILD_TILE_ROWS rows at a time into a
    per-thread buffer (never the whole W), each tile multiplied densely."""
    n = x.shape[-1]
    x2 = x.detach().reshape(-1, n)
    out = torch.empty(x2.shape[0], out_features, dtype=torch.float32)
    rows = min(REBUILD_TILE_ROWS, out_features)
    buffer = getattr(_WORKSPACE, "buffer", None)
    if buffer is None or buffer.size < rows * n:
        buffer = _WORKSPACE.buffer = np.empty(rows * n, np.float32)
    for r0 in range(0, out_features, rows):
        count = min(rows, out_features - r0)
        tile = buffer[:count * n].reshape(count, n)
        plane_rows_into(w, r0, tile)
        out[:, r0:r0 + count] = x2 @ torch.from_numpy(tile).T
    return out.reshape(*x.shape[:-1], out_features)


def bqq_linear_table_generic(x: torch.Tensor, w: LayoutTensors, out_features: int) -> torch.Tensor:
    return bqq_linear_tables(x, w, out_features, generic=True)


def plane_linear_table_generic(x: torch.Tensor, w: PlaneTensors, out_features: int) -> torch.Tensor:
    return plane_linear_tables(x, w, out_features, generic=True)


__all__ = ["bqq_linear_auto", "bqq_linear_cpu", "bqq_linear_table_generic", "bqq_linear_tables", "plane_linear_auto",
           "plane_linear_cpu", "plane_linear_rebuild", "plane_linear_table_generic", "plane_linear_tables"]
