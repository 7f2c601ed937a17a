"""The numba BQQ matmul (kernels/cpu/bqq_matmul.py): x·Ŵᵀ from packed BQQ factors, exact and deterministic
(the dense-reference comparison of every backend: tests/kernels/test_dispatch.py)."""

import numba
import torch

import bqq_kernels as kernels
from tests.helpers import random_weight


def test_exact_kernel_is_deterministic_across_threads_and_batching():
    layout = random_weight(300, 200, (96, 96), 2).kernel_layout()
    x = torch.randn(37, 200, generator=torch.Generator().manual_seed(2))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = kernels.bqq_linear(x, layout, backend="numba-exact")
        numba.set_num_threads(max(2, before))
        many = kernels.bqq_linear(x, layout, backend="numba-exact")
    finally:
        numba.set_num_threads(before)
    assert torch.equal(one, many)
    single = kernels.bqq_linear(x[5:6], layout, backend="numba-exact")  # another token tile and task split
    assert torch.equal(single[0], one[5])
