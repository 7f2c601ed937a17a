"""The multithreaded and serial builds of each numba kernel have their own cache entries.

numba keys a cached function's entries by signature only: two ``cache=True`` builds of one Python function
shared one entry, and the first one compiled (often the serial one, for a small problem) was loaded for
both, so the "parallel" sweeps ran on one thread in every later process.
"""
from __future__ import annotations

import numba
import numpy as np
import pytest

import bqq  # noqa: F401  (makes bqq_kernels importable from a source checkout)
from bqq_kernels.cpu import binary_factorization, bqq_matmul, first_order, plane_matmul
from bqq_kernels.cpu.builds import parallel_and_serial

PAIRS = [
    (binary_factorization, "_coupled_sweep"),
    (bqq_matmul, "_tasks"), (plane_matmul, "_tasks"),
    (first_order, "_clip_search"), (first_order, "_encode"), (first_order, "_bcq"),
]


@pytest.mark.parametrize(("module", "name"), PAIRS, ids=[f"{m.__name__.split('.')[-1]}.{n}" for m, n in PAIRS])
def test_parallel_and_serial_builds_are_cached_apart(module, name) -> None:
    parallel, serial = getattr(module, f"{name}_parallel"), getattr(module, f"{name}_serial")
    assert parallel.targetoptions["parallel"] is True
    assert serial.targetoptions.get("parallel", False) is False
    assert parallel._cache._cache_file._index_name != serial._cache._cache_file._index_name


def test_builds_compute_the_same_and_keep_the_function_apart() -> None:
    def total(x):
        s = np.zeros(x.shape[0])
        for i in numba.prange(x.shape[0]):
            s[i] = x[i].sum()
        return s

    parallel, serial = parallel_and_serial(total)
    x = np.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(parallel(x), serial(x))
    assert parallel.py_func.__qualname__.endswith("total_parallel")
    assert serial.py_func.__qualname__.endswith("total_serial")
    assert total.__qualname__.endswith("total")  # the original is untouched
