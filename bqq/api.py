"""`bqq.compress`: validate the input, pick the method, cut into groups, quantize."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from .common import as_float_matrix, check_seed, hessian_matrix, make_config
from .grouping import GroupGrid, parse_group_shape
from .methods import available_methods, get_method
from .quantized import QuantizedMatrix
from .solver.devices import solver_device
from .solver.hessian_math import prepare_hessian
from .solver.stacks import MapSolves


def compress(
    w: torch.Tensor | np.ndarray,
    bits: float = 2,
    *,
    method: str = "bqq",
    group_size: int | Sequence[int] | None = None,
    seed: int = 0,
    progress: bool | None = None,
    hessian: torch.Tensor | np.ndarray | None = None,
    device: str | torch.device | None = None,
    **opts: Any,
) -> QuantizedMatrix:
    """Compress a real matrix.

    Args:
        w: (m, n) floating torch tensor or numpy array; finite.
        bits: what it counts depends on the method (``bqq.methods.bits_meanings()``): the number of
            stacks p for ``"bqq"`` ("pseudo p*-bit"), a code width for ``"uq"``/``"bcq"``, a budget in
            bits per weight for ``"svd"``, ``"svdq"`` and ``"vq"``, stages for ``"lvq"``.
        method: a registered method name (``bqq.available_methods()``).
        group_size: None (one group), an int (square groups) or (rows, cols); every group gets its own
            scalars. Sides that do not divide the matrix are cut into balanced parts.
        seed: all randomness derives from it; the same seed gives bit-identical codes.
        progress: show a tqdm bar (None: only on a terminal).
        hessian: None (minimize ‖W - Ŵ‖²), or the (n, n) second moment H = Σ x xᵀ of the inputs x the
            matrix multiplies (W x): then the output error tr((W - Ŵ) H (W - Ŵ)ᵀ) = Σ ‖(W - Ŵ) x‖² is
            minimized, for methods with ``output_aware`` (``"bqq"``, ``"gptq"``; their ``damping``
            option adds that fraction of H's mean diagonal to its diagonal).
        device: where the BQQ solver runs: None (default) means the device of ``w`` (a CUDA tensor is
            solved on its GPU, anything else on the CPU); ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` choose.
            On a GPU all groups of one shape are solved together (:mod:`bqq.solver.torch_backend`); the same
            seed on the same GPU and versions gives bit-identical codes, and CPU and GPU codes differ
            at rounding level with the same error on average, with or without ``hessian``. The other
            methods (milliseconds) run on the CPU.
        **opts: fields of the method's config dataclass, e.g. ``sweeps=600`` or ``rank_scale=1.5``
            (l = round(rank_scale · m n / (m + n)) per group) for BQQ.

    Returns:
        A :class:`~bqq.quantized.QuantizedMatrix` with ``dequantize()``, ``bits_per_weight``, ``nbytes``.
    """
    cls, config = method_config(method, bits, opts)
    array, dtype = as_float_matrix(w)
    check_seed(seed)
    h = None if hessian is None else prepared_hessian(cls, hessian, array.shape[1])
    grid = GroupGrid.build(array.shape, parse_group_shape(group_size, array.shape))
    q = solve(cls, array, grid, bits, seed, config, progress=progress, hessian=h, device=weight_device(w, device))
    q.dtype = dtype
    q._source = array  # kept for continuation (BQQ extend); release_source() drops it
    return q


def method_config(method: str, bits: Any, opts: Mapping[str, Any]) -> tuple[type[QuantizedMatrix], Any]:
    """The method class and its settings, after checking ``bits`` and the option names and values."""
    cls = get_method(method)
    check_bits(cls, bits)
    return cls, make_config(cls.config_class, dict(opts), f"method {method!r}")


def prepared_hessian(cls: type[QuantizedMatrix], hessian: Any, n: int) -> np.ndarray:
    """A user's H checked (shape, dtype, finiteness, a method that uses it) and normalized."""
    if not cls.output_aware:
        raise TypeError(f"method {cls.method!r} does not use a hessian (output-aware methods: "
                        f"{sorted(m for m in available_methods() if get_method(m).output_aware)})")
    return prepare_hessian(hessian_matrix(hessian, n))


def weight_device(w: Any, device: Any) -> torch.device | None:
    """The solver device for ``device`` (None: ``w``'s device when ``w`` is a torch tensor); None is the CPU."""
    if device is None and isinstance(w, torch.Tensor):
        device = w.device
    return solver_device(device)


def solve(cls: type[QuantizedMatrix], w: np.ndarray, grid: GroupGrid, bits: float, seed: int, config: Any, *,
          progress: bool | None = None, first_group: int = 0, hessian: np.ndarray | None = None,
          device: torch.device | None = None, map_solves: MapSolves | None = None) -> QuantizedMatrix:
    """Run ``cls.quantize`` on a validated float64 matrix (the one place that sets the thread policy);
    ``hessian``: None or H from :func:`prepared_hessian` (the method damps it); ``map_solves``: for a method
    with ``spreads_groups``, who solves its groups (:func:`bqq.solver.stacks.grow_grid`)."""
    extra = {} if hessian is None else {"hessian": hessian}
    if device is not None and cls.solves_on_devices:
        extra["device"] = device
    if map_solves is not None and cls.spreads_groups:
        extra["map_solves"] = map_solves
    limits = threadpool_limits(limits=1, user_api="blas") if cls.single_threaded_blas else contextlib.nullcontext()
    with limits:  # (QuantizedMatrix.single_threaded_blas says why)
        return cls.quantize(w, grid, bits, seed, config, progress=progress, first_group=first_group, **extra)


def check_bits(cls: type[QuantizedMatrix], bits: Any) -> None:
    """ValueError unless ``bits`` is a valid bit count for method class ``cls``."""
    if isinstance(bits, bool) or not isinstance(bits, (int, float, np.integer, np.floating)):
        raise ValueError(f"bits must be a number, got {bits!r}")
    if not math.isfinite(bits):
        raise ValueError(f"bits must be finite, got {bits!r}")
    if cls.integer_bits and int(bits) != bits:
        raise ValueError(f"method {cls.method!r} needs an integer bits, got {bits!r}")
    if not cls.min_bits <= bits <= cls.max_bits:
        raise ValueError(f"bits={bits!r} out of range for method {cls.method!r} "
                         f"({cls.bits_meaning}): expected {cls.min_bits} <= bits <= {cls.max_bits}")
