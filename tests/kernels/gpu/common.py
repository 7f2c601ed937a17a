"""Inputs shared by the tests of the Triton solver sweeps (and the solver's torch backend)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bqq_kernels.cpu.binary_factorization import gram_blocks as gram


def triton_test_device() -> str:
    """Where the Triton sweep tests run: "cpu" in Triton's interpreter (no GPU: conftest sets
    TRITON_INTERPRET=1), "cuda" when the kernels are compiled for a GPU; skips the calling module otherwise.
    Call it after ``pytest.importorskip("triton")``."""
    from bqq_kernels.gpu import row_sweep

    if row_sweep.interpreted():
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    pytest.skip("Triton kernels are compiled but there is no CUDA device", allow_module_level=True)


def sweep_inputs(nbatch: int, rows: int, other: int, l: int, hard: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((nbatch, rows, other)).astype(np.float32)
    u = rng.uniform(-1, 1, (nbatch, rows, l)).astype(np.float32)
    v = rng.uniform(-1, 1, (nbatch, other, l)).astype(np.float32)
    if hard:
        u, v = np.where(u >= 0, 1, -1).astype(np.float32), np.where(v >= 0, 1, -1).astype(np.float32)
    alpha = np.full(nbatch, 1.0 / np.sqrt(l), np.float32)
    inv_temp = np.linspace(0.05, 3.0, nbatch).astype(np.float32)  # up to saturation (|f/T| > 4.97)
    return x, v, u, gram(np.ascontiguousarray(v.transpose(0, 2, 1))), alpha, inv_temp


class RecordedLaunch:
    """Stands in for a Triton kernel: records each launch's grid and arguments, runs nothing."""

    def __init__(self, calls: list):
        self.calls = calls

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((grid, args, kwargs))


def refuse_host_read(*args, **kwargs):
    """Monkeypatched over tensor-to-host reads: the forward must never call it."""
    raise AssertionError("a tensor was read on the host during the forward")
