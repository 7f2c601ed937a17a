"""The Triton BQQ matmul's three paths (decode, factored, rebuild) against the dense rebuild, in fp32, fp16 and
bf16; the path policy; and that a forward needs no host synchronization.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET=1), so
shapes stay small. With a GPU the same checks run compiled on CUDA tensors, plus CUDA graph capture,
``torch.cuda.set_sync_debug_mode("error")`` and ``torch.compile``.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import bqq_kernels as kernels
from bqq_kernels import dispatch
from tests.helpers import rel_err
from tests.kernels.common import random_layout
from tests.kernels.gpu.common import RecordedLaunch, refuse_host_read

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

HAS_CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Relative error (Frobenius) against the fp64 product of the same (dtype-rounded) input: the kernels
# compute in fp32 and round once to the output dtype.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def gpu():
    from bqq_kernels import gpu

    return gpu


def bqq_matmul():
    from bqq_kernels.gpu import bqq_matmul

    return bqq_matmul


def devices() -> list[str]:
    """CUDA when there is one; the CPU when the kernels are interpreted."""
    if importlib.util.find_spec("triton") is None:
        return []
    return ["cuda"] if HAS_CUDA else (["cpu"] if gpu().interpreted() else [])


# (row part sizes, column part sizes, stacks, seed, steps per Y program): uneven parts with ranks differing per
# group, odd widths, several stacks; ranks 35 and 60 and 70 rows and columns span several rank, row and column
# tiles of each path; 2 steps split the first grid's 6 (column block, stack) pairs over 3 programs per row tile.
GRIDS = [((16, 14), (9, 12, 5), 2, 0, 2), ((40,), (45, 19), 3, 0, 8), ((70,), (70,), 1, 0, 8)]
# tokens per path: 0, one, tile remainders (decode tiles of 1-16 tokens, factored of 16-64)
TOKENS = {"decode": [0, 1, 3, 21], "factored": [5, 37], "rebuild": [0, 2, 19]}


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("path", ["decode", "factored", "rebuild"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_path_equals_the_dense_rebuild(device, path, dtype, monkeypatch):
    run = gpu().bqq_linear_triton
    for index, (*grid, steps) in enumerate(GRIDS):
        monkeypatch.setattr(bqq_matmul(), "Y_STEPS_PER_PROGRAM", steps)
        layout = random_layout(*grid).to(device)
        m, n = layout.shape
        w = kernels.dequantize_layout(layout, torch.float64)
        gen = torch.Generator().manual_seed(index)
        bias = torch.randn(m, generator=gen).to(device, dtype)
        for tokens in TOKENS[path]:
            x = torch.randn(tokens, n, generator=gen).to(device, dtype)
            for b in (None, bias):
                out = run(x, layout.tensors, m, b, path=path)
                assert out.shape == (tokens, m) and out.dtype == dtype and out.device == x.device
                if tokens:
                    ref = x.double() @ w.T + (0 if b is None else b.double())
                    assert rel_err(out, ref) < TOLERANCE[dtype], (grid, tokens, b is None)


@pytest.mark.parametrize("device", devices())
def test_leading_dimensions_strides_and_determinism(device):
    layout = random_layout((16, 14), (9, 12, 5), 2).to(device)
    m, n = layout.shape
    w = kernels.dequantize_layout(layout, torch.float64)
    x = torch.randn(2, 3, 2 * n, generator=torch.Generator().manual_seed(5)).to(device)[..., ::2]  # not contiguous
    run = gpu().bqq_linear_triton
    for path in gpu().PATHS:
        out = run(x, layout.tensors, m, path=path)
        assert out.shape == (2, 3, m)
        assert rel_err(out, x.double() @ w.T) < 1e-5
        assert torch.equal(out, run(x, layout.tensors, m, path=path))  # no atomics: the same bits every time


@pytest.mark.parametrize("device", devices())
def test_rebuild_weight_equals_dequantize(device):
    layout = random_layout((40,), (45, 19), 3).to(device)
    for dtype in DTYPES:
        weight = gpu().rebuild_weight(layout.tensors, *layout.shape, dtype)
        ref = kernels.dequantize_layout(layout, torch.float64)
        assert weight.dtype == dtype
        assert rel_err(weight, ref) < TOLERANCE[dtype]


def test_path_policy_and_switch_points(monkeypatch):
    g = gpu()
    layout = random_layout((16, 14), (9, 12, 5), 2)
    l_max = layout.z.shape[3]  # the largest rank
    assert g.SWITCH_POINTS.factored_max_tokens_per_rank * l_max < g.DECODE_MAX_TOKENS
    assert g.choose_path(1, layout.tensors) == "decode"
    assert g.choose_path(g.DECODE_MAX_TOKENS, layout.tensors) == "decode"
    assert g.choose_path(g.DECODE_MAX_TOKENS + 1, layout.tensors) == "rebuild"
    monkeypatch.setattr(g.SWITCH_POINTS, "decode_max_tokens", 2)
    monkeypatch.setattr(g.SWITCH_POINTS, "factored_max_tokens_per_rank", 1.0)
    paths = [g.choose_path(t, layout.tensors) for t in (2, 3, l_max, l_max + 1)]
    assert paths == ["decode", "factored", "factored", "rebuild"]
    with pytest.raises(ValueError, match="unknown path"):
        g.bqq_linear_triton(torch.ones(1, layout.shape[1]), layout.tensors, layout.shape[0], path="magic")
    with pytest.raises(ValueError, match="float64"):
        g.bqq_linear_triton(torch.ones(1, layout.shape[1], dtype=torch.float64), layout.tensors, layout.shape[0])


def test_forward_reads_no_tensor_on_the_host(monkeypatch):
    """Structural check of the no-sync promise (CUDA graphs, no stalls): from bqq_linear down to the kernel
    launches no tensor value reaches Python. The Triton launches are recorded instead of run (the interpreter
    itself copies tensors to the host), so this runs without a GPU on CPU tensors."""
    g, module = gpu(), bqq_matmul()
    calls: list = []
    for name in ("_z_kernel", "_y_kernel", "_sum_kernel", "_rebuild_kernel"):
        monkeypatch.setattr(module, name, RecordedLaunch(calls))
    monkeypatch.setattr(module, "Y_STEPS_PER_PROGRAM", 2)  # 3 splits: the partial-sum launch too
    # the cpu device gets the triton backend for this test, through the same dispatch as CUDA
    monkeypatch.setitem(dispatch._REGISTRY[("linear", "cpu")], "triton", "bqq_kernels.gpu.bqq_matmul:bqq_linear_triton")
    monkeypatch.setitem(dispatch._TRAITS, ("linear", "cpu", "triton"), dispatch._TRITON)
    monkeypatch.setitem(dispatch._RESOLVED, ("linear", "cpu", "triton"), g.bqq_linear_triton)
    layout = random_layout((16, 14), (9, 12, 5), 2)
    m, n = layout.shape
    bias = torch.randn(m, dtype=torch.float16)
    inputs = [torch.randn(t, n).half() for t in (1, 9, 40)]
    choose = module.choose_path
    for name in ("tolist", "item", "cpu", "numpy", "__int__", "__float__", "__bool__", "__index__", "__array__"):
        monkeypatch.setattr(torch.Tensor, name, refuse_host_read)
    launches = []
    with torch.no_grad():
        for x in inputs:
            for path in (*g.PATHS, None):  # each path forced, then the policy's choice
                monkeypatch.setattr(module, "choose_path", choose if path is None else lambda t, w, p=path: p)
                before = len(calls)
                kernels.bqq_linear(x, layout, bias, backend="triton")
                launches.append((path, len(calls) - before))
    monkeypatch.undo()
    assert all(count == (1 if path == "rebuild" else 3) for path, count in launches if path), launches
    for grid, args, kwargs in calls:
        assert all(type(v) is int and v > 0 for v in grid), grid
        for value in (*args, *kwargs.values()):
            assert isinstance(value, torch.Tensor) or type(value) in (int, bool, str) or \
                type(value).__module__.startswith("triton"), type(value)


def _model(device: str, dtype: torch.dtype):
    layer = random_layout((40,), (45, 19), 3).to(device)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.layout = layer
            self.bias = nn.Parameter(torch.randn(layer.shape[0], device=device, dtype=dtype))

        def forward(self, x):
            return torch.relu(kernels.bqq_linear(x, self.layout, self.bias))

    return Layer().eval()


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("tokens", [1, 16, 300])
def test_cuda_forward_has_no_sync_and_replays_in_a_cuda_graph(tokens):
    torch.manual_seed(0)
    for dtype in DTYPES:
        model = _model("cuda", dtype)
        x = torch.randn(tokens, 64, device="cuda", dtype=dtype)
        with torch.no_grad():
            eager = model(x)  # compiles the kernels (not capturable) and warms the allocator
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                again = model(x)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            assert torch.equal(eager, again)
            graph = torch.cuda.CUDAGraph()
            static_x = x.clone()
            with torch.cuda.graph(graph):
                static_out = model(static_x)
            static_x.copy_(torch.randn_like(x))
            graph.replay()
            torch.testing.assert_close(static_out, model(static_x), rtol=0, atol=0)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")
def test_torch_compile_on_cuda_in_half_precision():
    torch.manual_seed(0)
    model = _model("cuda", torch.float16)
    compiled = torch.compile(model, fullgraph=True)
    for tokens in (1, 200):
        x = torch.randn(tokens, 64, device="cuda", dtype=torch.float16)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)


def test_kernels_compile_for_hopper_without_a_gpu():
    """Triton lowers the launch configurations to sm_90 machine code with the ptxas it ships (the interpreter
    skips lowering, so this is the check of the compiled kernels on a machine without a GPU): tensor cores on
    the factored and rebuild paths, CUDA cores at decode, no register spills."""
    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip("this Triton has no NVIDIA backend")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    command = [sys.executable, "-m", "bqq_kernels.gpu.compile_check", "--quick", "--json"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {row["variant"]: row for row in json.loads(result.stdout.strip().splitlines()[-1])}
    assert len(rows) == 16, sorted(rows)
    if "reg" not in rows["rebuild float16"]:
        pytest.skip("no cuobjdump to read the machine code")
    for name, row in rows.items():
        tensor_cores = row["HGMMA"] + row["HMMA"]
        assert (tensor_cores > 0) == name.startswith(("factored", "rebuild")), row
        assert row["stack"] == 0 and row["LDL"] == row["STL"] == 0, row
