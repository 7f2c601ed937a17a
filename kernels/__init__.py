"""Compiled compute kernels used by :mod:`bqq`.

``kernels.cpu`` holds numba kernels (multithreaded, deterministic: every output row is computed by one
thread in a fixed order, so results do not depend on the thread count). GPU kernels (Triton) will live
in ``kernels.gpu`` and are imported lazily.
"""
