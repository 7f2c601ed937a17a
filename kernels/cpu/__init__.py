"""Numba CPU kernels."""

from .binary_factorization import coupled_row_sweep, gram, row_sweep, spectral_norm

__all__ = ["coupled_row_sweep", "gram", "row_sweep", "spectral_norm"]
