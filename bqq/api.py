"""`bqq.compress`: validate the input, pick the method, cut into groups, quantize."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from .grouping import GroupGrid, parse_group_shape
from .methods import get_method
from .quantized import QuantizedMatrix, dtype_name


def compress(
    w: torch.Tensor | np.ndarray,
    bits: float = 2,
    *,
    method: str = "bqq",
    group_size: int | Sequence[int] | None = None,
    rank_scale: float = 1.0,
    seed: int = 0,
    progress: bool | None = None,
    **opts: Any,
) -> QuantizedMatrix:
    """Compress a real matrix.

    Args:
        w: (m, n) floating torch tensor or numpy array; finite.
        bits: bits per weight. For ``"bqq"`` the number of stacks p ("pseudo p*-bit"); for ``"svd"`` a
            memory budget that sets the rank; an integer code width for ``"uq"`` and ``"bcq"``.
        method: a registered method name (``bqq.available_methods()``).
        group_size: None (one group), an int (square groups) or (rows, cols); every group gets its own
            scalars. Sides that do not divide the matrix are cut into balanced parts.
        rank_scale: BQQ only: inner dimension l = round(rank_scale * m n / (m + n)) per group.
        seed: all randomness derives from it; the same seed gives bit-identical codes.
        progress: show a tqdm bar (None: only on a terminal).
        **opts: fields of the method's config dataclass (e.g. ``sweeps=600`` for BQQ).

    Returns:
        A :class:`~bqq.quantized.QuantizedMatrix` with ``dequantize()``, ``bits_per_weight``, ``nbytes``.
    """
    cls = get_method(method)
    array, dtype = as_float_matrix(w)
    check_bits(cls, bits)
    _check_seed(seed)
    if not (isinstance(rank_scale, (int, float)) and math.isfinite(rank_scale) and rank_scale > 0):
        raise ValueError(f"rank_scale must be a finite number > 0, got {rank_scale!r}")
    if method == "bqq":
        opts["rank_scale"] = float(rank_scale)
    elif rank_scale != 1.0:
        raise ValueError(f"rank_scale applies to method='bqq' only, not {method!r}")
    config = make_config(cls, opts)
    grid = GroupGrid.build(array.shape, parse_group_shape(group_size, array.shape))
    # numba's worker threads stay hot between sweeps; BLAS threads beside them ran up to ~60x slower.
    with threadpool_limits(limits=1, user_api="blas"):
        q = cls.quantize(array, grid, bits, seed, config, progress=progress)
    q.dtype = dtype
    q._source = array  # kept for continuation (BQQ extend); release_source() drops it
    return q


def make_config(cls: type[QuantizedMatrix], opts: dict[str, Any]) -> Any:
    """The method's config dataclass from keyword options; unknown names raise TypeError."""
    names = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(opts) - names)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for method {cls.method!r}; valid: {sorted(names)}")
    return cls.config_class(**opts)


def as_float_matrix(w: torch.Tensor | np.ndarray) -> tuple[np.ndarray, str]:
    """Validate a user matrix; return it as a float64 numpy array plus its dtype name."""
    if isinstance(w, torch.Tensor):
        if not w.is_floating_point():
            raise ValueError(f"matrix must have a floating dtype, got {w.dtype}")
        dtype = dtype_name(w.dtype)
        arr = w.detach().to("cpu", torch.float64).numpy()
    elif isinstance(w, np.ndarray):
        if w.dtype.kind != "f":
            raise ValueError(f"matrix must have a floating dtype, got {w.dtype}")
        dtype = dtype_name(w.dtype) if w.dtype != np.float16 else "float16"
        arr = w.astype(np.float64, copy=False)
    else:
        raise TypeError(f"expected a torch.Tensor or numpy.ndarray, got {type(w).__name__}")
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"matrix is empty (shape {tuple(arr.shape)})")
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.argwhere(~finite)
        nan = int(np.isnan(arr).sum())
        raise ValueError(f"matrix has {nan} NaN and {bad.shape[0] - nan} Inf entries "
                         f"(first at index {tuple(int(v) for v in bad[0])})")
    return np.ascontiguousarray(arr), dtype


def check_bits(cls: type[QuantizedMatrix], bits: Any) -> None:
    """ValueError unless ``bits`` is a valid bit count for method class ``cls``."""
    if isinstance(bits, bool) or not isinstance(bits, (int, float, np.integer, np.floating)):
        raise ValueError(f"bits must be a number, got {bits!r}")
    if not math.isfinite(bits):
        raise ValueError(f"bits must be finite, got {bits!r}")
    if cls.integer_bits and int(bits) != bits:
        raise ValueError(f"method {cls.method!r} needs an integer bits, got {bits!r}")
    if not cls.min_bits <= bits <= cls.max_bits:
        raise ValueError(f"bits={bits!r} out of range for method {cls.method!r}: "
                         f"expected {cls.min_bits} <= bits <= {cls.max_bits}")


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
