"""Triton GPU kernels. Importing this package imports triton; :mod:`kernels.dispatch` does so lazily."""

from .bqq_matmul import bqq_linear_triton, interpreted

__all__ = ["bqq_linear_triton", "interpreted"]
