"""Where the BQQ solver runs: the one device resolution for both backends.

:func:`solver_device` reads a user's ``device`` argument (None: the CPU backend, numba); a torch device it
returns is checked by :func:`resolve_device` when the torch backend starts (Triton present, a GPU there).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch

# Device types the torch/Triton backend handles. Tests add "cpu" (Triton's interpreter) to run that path.
TORCH_SOLVER_DEVICE_TYPES = {"cuda"}


def solver_device(device: Any) -> torch.device | None:
    """The device the BQQ solver runs on for a ``device`` argument: None for the CPU (numba), else a
    :class:`torch.device` for the torch backend (CUDA; the CPU only in tests, through
    :data:`TORCH_SOLVER_DEVICE_TYPES`). ValueError for a device string torch does not know."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be None, 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if dev.type not in TORCH_SOLVER_DEVICE_TYPES:
        if dev.type == "cpu":
            return None
        raise ValueError(f"the BQQ solver runs on the CPU or on CUDA devices, got {device!r}")
    return dev


def gpu_sweeps() -> tuple[ModuleType, ModuleType]:
    """The Triton sweep modules (:mod:`bqq_kernels.gpu.row_sweep`, :mod:`bqq_kernels.gpu.coupled_sweep`),
    imported on first use; ImportError naming the package when triton is missing."""
    try:
        from bqq_kernels.gpu import coupled_sweep, row_sweep
    except ImportError as exc:
        if exc.name == "triton" or "triton" in str(exc):
            raise ImportError("bqq's GPU solver needs the 'triton' package: pip install 'bqq[gpu]' "
                              "(or pip install triton)") from exc
        raise
    return row_sweep, coupled_sweep


def resolve_device(device: str | torch.device | None, like: Any = None) -> torch.device:
    """The device the torch backend solves on: ``device``, else ``like``'s device if it is a tensor, else CUDA.

    Raises RuntimeError when the Triton kernels cannot run there (a non-CUDA device outside the
    interpreter, or CUDA requested without one).
    """
    if device is None:
        device = like.device if isinstance(like, torch.Tensor) else "cuda"
    device = torch.device(device)
    row_sweep, _ = gpu_sweeps()
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' but torch sees no CUDA GPU (use the CPU backend: device=None)")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif not (device.type == "cpu" and row_sweep.interpreted()):
        raise RuntimeError(f"the GPU solver runs on CUDA devices, not {device.type!r} (CPU tensors only in "
                           "Triton's interpreter, TRITON_INTERPRET=1, for tests; use the CPU backend there)")
    return device
