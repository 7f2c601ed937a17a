"""Numba CPU kernels."""

from .binary_factorization import coupled_row_sweep, gram_blocks, row_phase, spectral_norm

__all__ = ["coupled_row_sweep", "gram_blocks", "row_phase", "spectral_norm"]
