"""bqq_kernels.bqq_linear (kernels/dispatch.py): x·Ŵᵀ from packed BQQ factors on every backend (numba CPU, Triton GPU /
interpreter) against the dense reference, gradients, input dtypes, dispatch errors."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import bqq
import bqq_kernels as kernels
from tests.helpers import random_weight, rel_err

HAS_TRITON = importlib.util.find_spec("triton") is not None
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


# The default CPU backend runs the register-table kernel for a few tokens: its 16-bit tables round
# (tests/kernels/cpu/test_table_matmul.py bounds that error); "numba-exact" and the Triton kernels are exact up to
# float32 summation order.
TABLE_TOLERANCE = 5e-4
EXACT_TOLERANCE = 1e-5


def triton_interpreted() -> bool:
    """Whether the Triton kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1 without a GPU)."""
    if not HAS_TRITON:
        return False
    from bqq_kernels.gpu import interpreted

    return interpreted()


def kernel_fns(device: str):
    """The kernels to check on ``device``: numba on CPU tensors, Triton on CUDA tensors, and the Triton kernel on
    CPU tensors too when it is interpreted (compiled Triton cannot read CPU memory)."""
    if device != "cpu":
        return {"triton": lambda x, lay: kernels.bqq_linear(x, lay, backend="triton")}
    fns = {name: (lambda x, lay, name=name: kernels.bqq_linear(x, lay, backend=name))
           for name in ("numba", "numba-exact", "numba-table")}
    if triton_interpreted():
        from bqq_kernels.gpu import bqq_linear_triton

        fns["triton-interpreter"] = lambda x, lay: bqq_linear_triton(x, lay.tensors, lay.shape[0])
    return fns


CASES = [  # (m, n, group, stacks, token shapes): uneven grids, several stacks, odd widths
    (70, 45, (32, 20), 3, [(1, 45), (5, 45), (2, 19, 45)]),
    (96, 96, (96, 96), 2, [(1, 96), (16, 96), (37, 96)]),
    (40, 130, (40, 64), 1, [(3, 130)]),
    (9, 7, (9, 7), 4, [(1, 7), (2, 7)]),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}g{c[2][0]}x{c[2][1]}p{c[3]}")
def test_kernels_equal_dequantized_reference(device, case):
    m, n, group, stacks, token_shapes = case
    qw = random_weight(m, n, group, stacks)
    w = qw.dequantize(torch.float32)  # bqq's own per-group dequantize, independent of the kernel layout
    layout = qw.kernel_layout()
    torch.testing.assert_close(kernels.dequantize_layout(layout), w, rtol=0, atol=1e-5)
    gen = torch.Generator().manual_seed(1)
    for name, fn in kernel_fns(device).items():
        for shape in token_shapes:
            x = torch.randn(*shape, generator=gen).to(device)
            out = fn(x, layout)
            assert out.shape == (*shape[:-1], m) and out.dtype == torch.float32
            ref = x.cpu() @ w.T
            tolerance = EXACT_TOLERANCE if name in ("numba-exact", "triton", "triton-interpreter") else TABLE_TOLERANCE
            assert rel_err(out.cpu(), ref) < tolerance, (name, shape)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_runs_interpreted_only_when_asked_at_definition():
    # A GPU machine leaves TRITON_INTERPRET unset: the kernels are compiled, and the CPU cases skip them.
    code = "from bqq_kernels.gpu import interpreted; print(interpreted())"
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    assert triton_interpreted() == (os.environ.get("TRITON_INTERPRET") == "1")


def test_real_bqq_layer_through_the_kernel():
    torch.manual_seed(0)
    w = torch.randn(50, 40)
    q = bqq.compress(w, bits=2, sweeps=40)
    x = torch.randn(11, 40)
    assert rel_err(kernels.bqq_linear(x, q.kernel_layout()), x @ q.dequantize().T) < TABLE_TOLERANCE
    assert rel_err(kernels.bqq_linear(x, q.kernel_layout(), backend="numba-exact"), x @ q.dequantize().T) < 1e-5


def test_gradient_reaches_the_input_through_the_dense_weight():
    qw = random_weight(30, 20, (16, 20), 2)
    w = qw.dequantize(torch.float32)
    x = torch.randn(4, 20, requires_grad=True)
    bias = torch.randn(30, requires_grad=True)
    out = kernels.bqq_linear(x, qw.kernel_layout(), bias)
    grad = torch.randn_like(out)
    out.backward(grad)
    torch.testing.assert_close(x.grad, grad @ w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bias.grad, grad.sum(0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_input_dtypes(dtype):
    qw = random_weight(24, 16, (24, 16), 2)
    x = torch.randn(3, 16).to(dtype)
    out = kernels.bqq_linear(x, qw.kernel_layout())
    assert out.dtype == dtype
    ref = x.double() @ qw.dequantize(torch.float64).T
    # fp64 runs the reference in fp64 (only the layout's fp32 per-row constants round); half types in fp32
    assert rel_err(out, ref) < (1e-6 if dtype == torch.float64 else 1e-2)


def test_dispatch_errors_name_the_problem():
    layout = random_weight(8, 8, (8, 8), 1).kernel_layout()
    with pytest.raises(ValueError, match="expects 8"):
        kernels.bqq_linear(torch.randn(2, 9), layout)
    with pytest.raises(ValueError, match="not available"):
        kernels.bqq_linear(torch.randn(2, 8), layout, backend="cuda-magic")
    assert kernels.backends("cpu")[0] == "numba" and kernels.backends("cpu")[-1] == "reference"
    with pytest.raises(ValueError, match="not available"):
        kernels.set_default_backend("cpu", "triton")


