"""The BQQ solver: binary stacks by mean-field annealing, then exact scalar refits, on the CPU or a torch device.

One stack approximates a group residual R (m, n) by r·Y Z + s·Y 1 + t·1 Z + u with Y ∈ {0,1}^{m×l},
Z ∈ {0,1}^{l×n}. With Y = (U + 1)/2 and Z = (Vᵀ + 1)/2 this family equals α·U Vᵀ plus row, column and
constant terms, so the binary search runs in the ±1 form on the centered residual X = R - mean(R):

    min over U ∈ {±1}^{m×l}, V ∈ {±1}^{n×l} of ‖X - α U Vᵀ‖²

1. Mean-field annealing (Gauss-Seidel): magnetizations μ_U, μ_V ∈ [-1, 1], started near 0, are
   updated entry by entry to tanh(local field / T), alternating U and V, while T falls geometrically
   from ``t_start`` times the critical temperature T_c = 2 α σ_max(X) of the linearized update to
   ``t_end`` times T_c (or, plain, times the bulk's 2 α rms(X)(√m + √n) where lower). α is held at
   ``alpha_scale``·sqrt(mean(X²)/l). On the CPU a phase is GEMMs plus 64-wide bands of entries updated
   in order (``row_phase`` in ``kernels/cpu/binary_factorization.py``); on a GPU, Triton ``row_sweep``.
2. Polish: signs of the magnetizations, then exact bit-flip descent (T = 0) with α refitted, until
   (almost) no entry flips (``polish_tolerance``).
3. The refit: exact least squares of all 3p + 1 scalars of a group on its binaries.

Output-aware (calibrated) solving replaces ‖E‖² by tr(E H Eᵀ), H = Σ x xᵀ over the layer's inputs (the
group's columns): the U phase stays row-separable with h = X H V and G = Vᵀ H V, the V phase couples
its rows through H (the ``coupled_row_sweep`` kernels), T_c = 2 α σ_max(X H), the polish refits α
under H and the refit solves the H-weighted normal equations. H = None is the plain Frobenius objective.

Layout of the package (no module imports :mod:`bqq.methods`):

* :mod:`~bqq.solver.hessian_math`: H made solver-ready, damped, channel-capped, split by Schur complements
  (also used by GPTQ and the model pass);
* :mod:`~bqq.solver.settings`: inner dimension, sweep count, :class:`StackSettings`;
* :mod:`~bqq.solver.anneal`: one stack (starts, schedule, annealing, polish, restarts), over a backend;
* :mod:`~bqq.solver.stacks`: the greedy stack loop and the column-block driver, over a backend;
* :mod:`~bqq.solver.codes`: :class:`GroupCodes`, the codes under construction;
* backends, the interface :mod:`~bqq.solver.backend`: :mod:`~bqq.solver.numpy_backend` (numba sweeps) and
  :mod:`~bqq.solver.torch_backend` (Triton sweeps); :mod:`~bqq.solver.devices` picks the device.

Everything is batched over same-shape groups; randomness comes from one SeedSequence per
(seed, stack, group, restart), so results do not depend on batching or thread count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from . import anneal
from .backend import Backend
from .codes import TRANSIENT_BYTES, GroupCodes
from .devices import TORCH_SOLVER_DEVICE_TYPES, resolve_device, solver_device
from .hessian_math import clipped_channels, column_blocks, damped, prepare_hessian
from .numpy_backend import NumpyBackend, refit_scalars
from .settings import POWER_ITERATIONS, SWEEP_BUDGET, WEIGHTED_SWEEP_BUDGET, StackSettings, auto_sweeps, inner_dim
from .stacks import grow_grid, solve_groups
from .torch_backend import TorchBackend, refit_scalars_batched


def backend_for(device: torch.device | None, batch_groups: int = 64) -> Backend:
    """The backend for a device from :func:`solver_device`: None is the CPU (numba, ``batch_groups``
    groups per solve), a torch device the torch backend there."""
    return NumpyBackend(batch_groups) if device is None else TorchBackend(device)


def solve_sign_factors(x: Any, rank: int, seeds: Sequence[Sequence[int]], *, sweeps: int, t_start: float,
                       t_end: float, alpha_scale: float, polish_rounds: int, aspect_exponent: float = 0.7,
                       hessian: Any = None, backend: Backend | None = None) -> tuple[Any, Any]:
    """Sign factors of a batch of residuals (:func:`bqq.solver.anneal.solve_sign_factors` with keyword settings).

    Args:
        x: (B, m, n) float64 residuals (the mean is removed here).
        rank: inner dimension l.
        seeds: B integer sequences, one per problem, seeding its start.
        hessian: None, or (B, n, n) symmetric positive definite weights H of the objective
            tr((X - Xhat) H (X - Xhat)ᵀ) (see :func:`prepare_hessian`).
        backend: None: the CPU backend.

    Returns:
        U (B, m, l) and V (B, n, l) as int8 in {-1, +1} (numpy, or tensors on the torch backend's device),
        with X ≈ α U Vᵀ + row/col/const terms.
    """
    backend = backend or NumpyBackend()
    settings = StackSettings(sweeps, t_start, t_end, alpha_scale, polish_rounds, aspect_exponent)
    h = None if hessian is None else backend.asarray(hessian)
    u, v = anneal.solve_sign_factors(backend, x, rank, seeds, settings, h)
    return backend.int8(u), backend.int8(v)


def sign_fit_error(x: Any, u: Any, v: Any, hessian: Any = None, backend: Backend | None = None) -> np.ndarray:
    """Error of the best α·U Vᵀ + constant fit per problem (B,) for ±1 U (B, m, l), V (B, n, l), under H if given."""
    backend = backend or NumpyBackend()
    h = None if hessian is None else backend.asarray(hessian)
    return anneal.sign_fit_error(backend, x, backend.factors_of(u), backend.factors_of(v), h)


__all__ = [
    "POWER_ITERATIONS",
    "SWEEP_BUDGET",
    "TORCH_SOLVER_DEVICE_TYPES",
    "TRANSIENT_BYTES",
    "WEIGHTED_SWEEP_BUDGET",
    "Backend",
    "GroupCodes",
    "NumpyBackend",
    "StackSettings",
    "TorchBackend",
    "auto_sweeps",
    "backend_for",
    "clipped_channels",
    "column_blocks",
    "damped",
    "grow_grid",
    "inner_dim",
    "prepare_hessian",
    "refit_scalars",
    "refit_scalars_batched",
    "resolve_device",
    "sign_fit_error",
    "solve_groups",
    "solve_sign_factors",
    "solver_device",
]
