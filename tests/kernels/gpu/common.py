"""Inputs shared by the tests of the Triton solver sweeps (and the solver's torch backend)."""

from __future__ import annotations

import numpy as np

from bqq_kernels.cpu.binary_factorization import gram_blocks as gram


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
