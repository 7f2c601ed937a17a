"""The small interface the shared solver code (:mod:`~bqq.solver.anneal`, :mod:`~bqq.solver.stacks`) runs on.

A backend owns the large arrays and their layout (the numpy backend keeps factors (B, rows, l), the torch
backend entry-major (B, l, rows)); the shared code only sees them as opaque values, plus per-problem
vectors (B,) in numpy on the host. "Array" below is the backend's array type (numpy or a torch tensor).
Implementations: :class:`~bqq.solver.numpy_backend.NumpyBackend`, :class:`~bqq.solver.torch_backend.TorchBackend`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np

Array = Any


class Backend(Protocol):
    code_dtypes: tuple[Any, Any, Any, Any]  # dtypes of GroupCodes' ys, zs, scales, offset

    def context(self) -> AbstractContextManager[Any]:
        """Entered around a stack solve (thread limits, GEMM precision, current device)."""

    def batches(self, count: int, shape: tuple[int, int], rank: int, stacks: int, restarts: int,
                weighted: bool = False) -> tuple[int, int]:
        """(groups handed to the stack loop at once, groups per stack solve) for ``count`` groups."""

    def asarray(self, a: Any, dtype: Any = ...) -> Array:
        """``a`` as the backend's array (default float64)."""

    def repeat(self, x: Array, count: int) -> Array:
        """Each problem of x ``count`` times in a row (restarts)."""

    def broadcast(self, h: Array, count: int) -> Array:
        """One (n, n) H as (count, n, n)."""

    def take(self, a: Array, idx: np.ndarray) -> Array:
        """Problems ``idx`` of a."""

    def cat(self, arrays: list[Array], axis: int = 0) -> Array:
        """Concatenation along ``axis``."""

    def empty_codes(self, count: int, shape: tuple[int, int], rank: int) -> tuple[Array, ...]:
        """ys, zs, scales, offset of ``count`` groups with no stack yet."""

    def center(self, x: Array, hessian: Array | None) -> Array:
        """x (B, m, n) minus its best constant under the objective, float64."""

    def problem(self, x: Array, hessian: Array | None) -> Any:
        """The batch being solved (attributes ``xc``: float32 centered X, ``hessian``: float64 H or None)."""

    def scale_stats(self, prob: Any) -> tuple[np.ndarray, np.ndarray]:
        """rms(X) and σ_max(X H) per problem (B,), float64 on the host."""

    def factors(self, u: np.ndarray, v: np.ndarray) -> tuple[Array, Array]:
        """The sweep state for starting magnetizations U (B, m, l), V (B, n, l) (float32 numpy)."""

    def factors_of(self, u: Any) -> Array:
        """The sweep state for ±1 factors (B, rows, l) given by a caller."""

    def anneal(self, prob: Any, u: Array, v: Array, alpha: np.ndarray, inv_u: np.ndarray, inv_v: np.ndarray) -> None:
        """Soft sweeps in place, one per row of the (k, B) float32 inverse temperatures of U and V."""

    def sweep(self, prob: Any, u: Array, v: Array, alpha: np.ndarray, inv_temp_u: np.ndarray,
              inv_temp_v: np.ndarray, hard: bool) -> int:
        """One U phase then one V phase in place; the number of sign changes (0 when not ``hard``)."""

    def signs(self, a: Array) -> Array:
        """±1 (float32) from magnetizations (0 counts as +1)."""

    def copy(self, a: Array) -> Array:
        """A copy of a."""

    def changed(self, before: Array, after: Array) -> np.ndarray:
        """Entries that differ, per problem (B,), int64 on the host."""

    def put(self, a: Array, idx: np.ndarray, values: Array) -> None:
        """Problems ``idx`` of a set to ``values`` (len(idx), ...), in place."""

    def fit_terms(self, xc: Array, u: Array, v: Array, hessian: Array | None) -> tuple[np.ndarray, np.ndarray]:
        """<X, UVᵀ>_H and ‖UVᵀ‖²_H per problem, float64 on the host."""

    def weighted_square(self, xc: Array, hessian: Array | None) -> np.ndarray:
        """<X, X>_H per problem, float64 on the host."""

    def sign_bits(self, u: Array, v: Array) -> tuple[Array, Array]:
        """Y = (U > 0) (G, m, l) and Z = (Vᵀ > 0) (G, l, n), uint8."""

    def int8(self, u: Array) -> Array:
        """The state as int8 factors (B, rows, l)."""

    def refit(self, targets: Array, ys: Array, zs: Array, hessian: Array | None) -> tuple[Array, Array]:
        """The exact least-squares scalars of every group under an (n, n) H or None: float32 scales (G, p, 3),
        offsets (G,)."""
