"""The bit-plane kernels of the first-order codes (UQ, GPTQ, BCQ) on the CPU: each equals the dense
rebuild of the quantized matrix, for every bit width, uneven grids, odd widths and any token count.
That layers of every method use their kernel: tests/methods/test_contract.py; the Triton twin:
tests/kernels/gpu/test_plane_matmul.py."""

import numba
import numpy as np
import pytest
import torch
from torch import nn

import bqq
import bqq_kernels as kernels
from bqq.methods.uniform import UQMatrix
from bqq.ptq.modules import KEEP_DENSE_MAX_ELEMENTS, quantized_weight
from tests.helpers import rel_err

FIRST_ORDER = ("uq", "gptq", "bcq")
# (shape, group shape): an uneven grid with odd widths, one row per group (convolutions' channel groups),
# GPTQ-style groups of 128 columns with a short last group, and one group
GRIDS = [((37, 53), (10, 16)), ((24, 75), (1, 75)), ((9, 300), (1, 128)), ((16, 40), None)]
TOKENS = (1, 7, 8, 16, 33)


def compress(method: str, bits: int, shape, group_size, seed: int = 0):
    w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return bqq.compress(w, bits=bits, method=method, group_size=group_size)


@pytest.mark.parametrize("method", FIRST_ORDER)
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_kernel_equals_the_dense_rebuild(method, bits, grid):
    q = compress(method, bits, *grid)
    layout = q.kernel_layout()
    assert isinstance(layout, kernels.PlaneLayout) and layout.planes_count == bits
    w = q.dequantize(torch.float64)
    gen = torch.Generator().manual_seed(bits)
    for tokens in TOKENS:
        x = torch.randn(tokens, grid[0][1], generator=gen)
        for backend in ("numba-exact", "numba-rebuild"):
            assert rel_err(kernels.bqq_linear(x, layout, backend=backend), x.double() @ w.T) < 1e-5, (backend, tokens)
        assert rel_err(kernels.bqq_linear(x, layout), x.double() @ w.T) < 5e-4, tokens  # tables at few tokens


def test_results_do_not_depend_on_threads_or_batch():
    """Every output is summed in one fixed order: a token's output is bit-identical alone or in a batch,
    with one thread or all."""
    layout = compress("uq", 3, (70, 300), (1, 128)).kernel_layout()
    x = torch.randn(40, 300, generator=torch.Generator().manual_seed(0))
    full = kernels.bqq_linear(x, layout, backend="numba-exact")
    for i in (0, 17, 39):
        assert torch.equal(kernels.bqq_linear(x[i:i + 1], layout, backend="numba-exact")[0], full[i])
    rebuilt = kernels.bqq_linear(x, layout, backend="numba-rebuild")
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        assert torch.equal(kernels.bqq_linear(x, layout, backend="numba-exact"), full)
        assert torch.equal(kernels.bqq_linear(x[:3], layout, backend="numba-exact"), full[:3])
        assert torch.equal(kernels.bqq_linear(x, layout, backend="numba-rebuild"), rebuilt)
    finally:
        numba.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_input_dtypes(dtype):
    q = compress("bcq", 2, (30, 45), (10, 15))
    x = torch.randn(5, 45).to(dtype)
    out = kernels.bqq_linear(x, q.kernel_layout())
    assert out.dtype == dtype
    ref = x.double() @ q.dequantize(torch.float64).T
    assert rel_err(out, ref) < (1e-6 if dtype == torch.float64 else 1e-2)


def test_auto_layers_all_run_kernels():
    """`auto` picks BQQ for some layers and first-order codes for others; every pick has a kernel."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 10)).eval()
    with torch.no_grad():
        model[2].weight.uniform_(-0.1, 0.1)  # uniform weights: a first-order code wins there
    bqq.quantize(model, bits=2, group_size=32, sweeps=40)
    layers = [model[i] for i in (0, 2, 4)]
    assert all(layer.uses_kernel() for layer in layers), [layer.method for layer in layers]
    assert {layer.method for layer in layers} - {"bqq"}, "the test needs a first-order pick"
    x = torch.randn(4, 96)
    with torch.no_grad():
        out = model(x)
        for layer in layers:
            layer.backend = "reference"
        assert rel_err(out, model(x).double()) < 5e-4  # the register tables at 4 tokens


def test_small_parametrized_weights_are_kept_between_forwards(monkeypatch):
    """A depthwise convolution keeps its module and reads a dense Ŵ: built once, not at every forward,
    and rebuilt after a dtype change."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 4, 1)).eval()
    bqq.quantize(model, bits=4, method="uq")
    param = quantized_weight(model[0])
    assert param is not None and model[0].weight.numel() <= KEEP_DENSE_MAX_ELEMENTS
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        first = model(x)
        calls = []
        original = UQMatrix.dequantize
        monkeypatch.setattr(UQMatrix, "dequantize", lambda self, *a: calls.append(1) or original(self, *a))
        assert torch.equal(model(x), first) and calls == []
        model.double()
        assert model[0].weight.dtype == torch.float64 and calls == [1]
        # fp64 runs the exact reference; fp32 ran the 1x1 convolution's 36 tokens on the register tables
        torch.testing.assert_close(model(x.double()), first.double(), rtol=1e-3, atol=1e-4)
