"""A multithreaded and a serial numba build of one kernel, each with its own on-disk cache entry.

Why: numba names a cached function after its module, qualified name and line, and keys the entries in that
file by signature only, not by options such as ``parallel``. Two ``cache=True`` builds of one Python function
therefore shared one entry, and whichever compiled first was loaded for both: once a small problem had run
the serial build, the "parallel" sweeps and matmuls ran on one thread in every later process.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import numba as nb


def _renamed(func: Callable, suffix: str) -> Callable:
    """A copy of ``func`` (same code, globals, defaults) whose qualified name ends with ``suffix``."""
    clone = types.FunctionType(func.__code__, func.__globals__, func.__name__ + suffix, func.__defaults__,
                               func.__closure__)
    clone.__qualname__ = func.__qualname__ + suffix
    clone.__module__ = func.__module__
    clone.__doc__ = func.__doc__
    return clone


def parallel_and_serial(func: Callable) -> tuple[Callable, Callable]:
    """(parallel build, serial build) of ``func``, cached under ``<name>_parallel`` and ``<name>_serial``.

    Both release the GIL: the model pass solves groups side by side on threads (bqq.ptq.runner)."""
    return (nb.njit(parallel=True, cache=True, nogil=True)(_renamed(func, "_parallel")),
            nb.njit(parallel=False, cache=True, nogil=True)(_renamed(func, "_serial")))
