"""Numba CPU kernels."""

from .binary_factorization import gram, row_sweep, spectral_norm

__all__ = ["gram", "row_sweep", "spectral_norm"]
