"""Kernels: x·Ŵᵀ from packed BQQ factors (numba CPU, Triton GPU / interpreter) against the dense reference."""

import importlib.util
import os
import subprocess
import sys

import numba
import pytest
import torch
from torch import nn

import bqq
import bqq_kernels as kernels
from bqq.ptq import quantized_layers
from bqq.ptq.modules import trainable_scalars
from tests.helpers import random_weight, rel_err

HAS_TRITON = importlib.util.find_spec("triton") is not None
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


# The default CPU backend runs the register-table kernel for a few tokens: its 16-bit tables round
# (tests/test_table_kernels.py bounds that error); "numba-exact" and the Triton kernels are exact up to
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


def test_conv_kernel_path_with_stride_padding_dilation():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1))
    model = nn.Sequential(conv).eval()
    bqq.quantize(model, bits=1, method="bqq", sweeps=30)
    layer = model[0]
    x = torch.randn(3, 4, 9, 7)
    with torch.no_grad():
        out = layer(x)
        layer.backend = "reference"
        ref = layer(x)
    assert out.shape == ref.shape == conv(x).shape
    assert rel_err(out, ref) < TABLE_TOLERANCE


def test_reloaded_model_gives_identical_kernel_outputs(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5)).eval()
    bqq.quantize(model, bits=2, method="bqq", group_size=16, sweeps=40)
    bqq.save_quantized(model, tmp_path / "m.safetensors")
    torch.manual_seed(1)
    fresh = bqq.load_quantized(tmp_path / "m.safetensors", nn.Sequential(nn.Linear(20, 30), nn.ReLU(),
                                                                          nn.Linear(30, 5)).eval())
    x = torch.randn(7, 20)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    assert all(layer.kernel_layout() is not None for _, layer in quantized_layers(fresh))


def test_calibration_refit_invalidates_the_layout():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12)).eval()
    bqq.quantize(model, bits=2, method="bqq", sweeps=30)
    layer = model[0]
    x = torch.randn(5, 16)
    before = layer(x).detach()
    with trainable_scalars(model) as params:
        with torch.no_grad():
            params[0].add_(0.5)  # change the scalars
    after = layer(x).detach()
    layer.backend = "reference"
    assert not torch.equal(before, after)
    assert rel_err(after, layer(x).detach()) < TABLE_TOLERANCE


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_quantized_model(dtype):
    """`.half()` / `.to(torch.bfloat16)` of a quantized model: outputs in that dtype, close to the fp32 ones."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.GELU(), nn.Flatten(1),
                          nn.Linear(8 * 4 * 4, 10)).eval()
    bqq.quantize(model, bits=2, method="bqq", group_size=32, sweeps=20, progress=False)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
        model.to(dtype)
        layers = [layer for _, layer in quantized_layers(model)]
        assert all(layer.bias.dtype == dtype and layer.kernel_layout().r.dtype == torch.float32 for layer in layers)
        out = model(x.to(dtype))
        for layer in layers:
            layer.backend = "reference"
        dense = model(x.to(dtype))
    assert out.dtype == dense.dtype == dtype
    tolerance = 2e-3 if dtype == torch.float16 else 2e-2  # a few roundings to the half type along the way
    assert rel_err(out, ref) < tolerance and rel_err(dense, ref) < tolerance


def test_quantized_layers_move_their_layout_with_the_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12)).eval()
    bqq.quantize(model, bits=2, method="bqq", sweeps=20, progress=False)
    layer = model[0]
    assert layer.kernel_layout().device.type == "cpu"
    model.to("meta")  # the layout follows device moves (here to meta, which any machine has) ...
    assert layer.kernel_layout().device.type == "meta" and layer.bias.device.type == "meta"
    assert model(torch.empty(3, 16, device="meta")).shape == (3, 12)
    layer.invalidate_kernel_layout()  # ... also when it is rebuilt after the move
    assert layer.kernel_layout().device.type == "meta"
    model.half()  # dtype casts leave the packed bits and fp32 scalars alone, where they are
    assert layer.kernel_layout().r.dtype == torch.float32 and layer.bias.dtype == torch.float16
    assert layer.kernel_layout().device.type == "meta"
