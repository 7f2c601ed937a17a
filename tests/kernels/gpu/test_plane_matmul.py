"""The Triton bit-plane matmul (UQ, GPTQ, BCQ layouts) against the dense weight, on both of its paths (CUDA
cores, tensor cores), in fp32, fp16 and bf16; through ``bqq_linear``; and that a forward needs no host
synchronization.

Without a GPU the kernel runs in Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET=1), so
shapes stay small (the interpreter runs each program's tile operations in numpy). With a GPU the same checks
run compiled on CUDA tensors, plus CUDA graph capture and ``torch.cuda.set_sync_debug_mode("error")``.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import bqq
import bqq_kernels as kernels
from bqq_kernels import dispatch
from bqq_kernels.reference import dequantize_planes
from tests.helpers import rel_err
from tests.kernels.common import random_plane_layout
from tests.kernels.gpu.common import RecordedLaunch, refuse_host_read

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

HAS_CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Relative error (Frobenius) against the fp64 product of what the kernel multiplies (see `expected`): it
# computes in fp32 and rounds once to the output dtype.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def plane_matmul():
    from bqq_kernels.gpu import plane_matmul

    return plane_matmul


def devices() -> list[str]:
    """CUDA when there is one; the CPU when the kernel is interpreted."""
    if importlib.util.find_spec("triton") is None:
        return []
    return ["cuda"] if HAS_CUDA else (["cpu"] if plane_matmul().interpreted() else [])


def matrix(m: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((m, n))


def compressed(w: np.ndarray, bits: int, method: str, group: tuple[int, int]
               ) -> tuple[kernels.PlaneLayout, torch.Tensor]:
    """A real quantized matrix's plane layout and its float64 dequantization (M, N)."""
    q = bqq.compress(w, bits=bits, method=method, group_size=group)
    layout = q.kernel_layout()
    dense = torch.as_tensor(q.dequantize(), dtype=torch.float64)
    # the layout holds the same weight (float32 scalars: rounding level)
    assert rel_err(dequantize_planes(layout.tensors, *layout.shape, torch.float64), dense) < 1e-6
    return layout, dense


def uses_dot(tokens: int, dtype: torch.dtype, layout: kernels.PlaneLayout) -> bool:
    return plane_matmul().plane_config(tokens, dtype, layout.planes_count).constexprs["DOT"]


def expected(x: torch.Tensor, dense: torch.Tensor, bias: torch.Tensor | None, dot: bool) -> torch.Tensor:
    """The fp64 product of x (in its dtype) and the weight as the kernel multiplies it: in fp32 on the CUDA
    cores; on the tensor cores rounded to x's dtype (as a dense fp16/bf16 weight would be)."""
    weight = dense.to(x.dtype if dot else torch.float32).double()
    return x.double() @ weight.T + (0 if bias is None else bias.double())


def check(layout: kernels.PlaneLayout, dense: torch.Tensor, tokens, dtypes=(torch.float32,), bias: bool = True,
          seed: int = 0, **kwargs) -> None:
    """plane_linear_triton on ``tokens`` rows of each dtype, with and (if ``bias``) without a bias."""
    run = plane_matmul().plane_linear_triton
    m, n = layout.shape
    gen = torch.Generator().manual_seed(seed)
    device = devices()[0]
    layout = layout.to(device)
    for dtype in dtypes:
        b = torch.randn(m, generator=gen).to(device, dtype)
        for index, t in enumerate(tokens):
            x = torch.randn(t, n, generator=gen).to(device, dtype)
            with_bias = b if bias and index % 2 == 0 else None  # alternate, to keep the interpreter runs few
            out = run(x, layout.tensors, m, with_bias, **kwargs)
            assert out.shape == (t, m) and out.dtype == dtype and out.device == x.device
            dot = kwargs.get("dot")
            ref = expected(x, dense.to(device), with_bias, uses_dot(t, dtype, layout) if dot is None else dot)
            assert rel_err(out, ref) < TOLERANCE[dtype], (dtype, t, with_bias is None)


needs_kernel = pytest.mark.skipif(not devices(), reason="needs CUDA or Triton's interpreter")


@needs_kernel
@pytest.mark.parametrize("bits", range(1, 9))
def test_uq_every_bit_width_on_an_uneven_grid(bits):
    # 37 x 53 in (10, 16) groups: 4 x 4 uneven parts, odd width; one token (CUDA cores), 16 (tensor cores)
    layout, dense = compressed(matrix(37, 53), bits, "uq", (10, 16))
    assert layout.planes_count == bits
    check(layout, dense, (1, 16))


@needs_kernel
@pytest.mark.parametrize(("method", "bits"), [("bcq", 1), ("bcq", 2), ("bcq", 4), ("gptq", 3)])
def test_bcq_and_gptq(method, bits):
    layout, dense = compressed(matrix(37, 53, seed=1), bits, method, (10, 16))
    check(layout, dense, (5, 40))


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes_token_counts_and_bias(dtype):
    layout, dense = compressed(matrix(37, 53, seed=2), 4, "uq", (10, 16))
    check(layout, dense, (1, 5, 16, 40), dtypes=(dtype,))
    check(layout, dense, (5, 16), dtypes=(dtype,), seed=1)  # the other bias choice at 5 and 16 tokens


@needs_kernel
@pytest.mark.parametrize(("shape", "group", "method", "bits"), [
    ((12, 53), (1, 53), "uq", 3),  # per-row groups (1, n): one block, odd width, scalars per row
    ((6, 300), (1, 128), "bcq", 2),  # (1, 128)-style groups on 300 columns: 3 blocks of 100
    ((6, 256), (1, 128), "uq", 5),  # blocks of 128 columns: one full chunk at one token, two on tensor cores
])
def test_row_groups(shape, group, method, bits):
    layout, dense = compressed(matrix(*shape, seed=3), bits, method, group)
    check(layout, dense, (1, 5, 16, 40), dtypes=(torch.float32, torch.float16))


@needs_kernel
def test_random_planes_with_wide_and_narrow_blocks():
    """build_plane_layout's bits: blocks from 3 to 130 columns (more than one chunk of every path; the offset
    over the pad columns of each chunk must not count), row parts off the row tiles, 5 planes."""
    layout = random_plane_layout((7, 13), (3, 130, 21), 5)
    dense = dequantize_planes(layout.tensors, *layout.shape, torch.float64)
    check(layout, dense, (1, 8, 40), dtypes=(torch.float32, torch.bfloat16))


@needs_kernel
def test_forced_paths_and_token_tiles():
    """Tensor cores at one token (15 of 16 tile rows masked); CUDA cores at 40 tokens (5 tiles of 8)."""
    layout = random_plane_layout((20,), (9, 12), 3, seed=1)
    dense = dequantize_planes(layout.tensors, *layout.shape, torch.float64)
    check(layout, dense, (1,), dtypes=(torch.float32, torch.float16), dot=True)
    check(layout, dense, (40,), dtypes=(torch.float32, torch.float16), dot=False)


@needs_kernel
def test_leading_dimensions_strides_and_determinism():
    device = devices()[0]
    layout = random_plane_layout((7, 13), (9, 12, 5), 2).to(device)
    m, n = layout.shape
    dense = dequantize_planes(layout.tensors, m, n, torch.float64)
    x = torch.randn(2, 3, 2 * n, generator=torch.Generator().manual_seed(5)).to(device)[..., ::2]  # not contiguous
    run = plane_matmul().plane_linear_triton
    for dot in (False, True):
        out = run(x, layout.tensors, m, dot=dot)
        assert out.shape == (2, 3, m)
        assert rel_err(out, x.double() @ dense.T) < 1e-5
        assert torch.equal(out, run(x, layout.tensors, m, dot=dot))  # no atomics: the same bits every time


@needs_kernel
def test_empty_input_and_errors():
    device = devices()[0]
    layout = random_plane_layout((7,), (9,), 2).to(device)
    run = plane_matmul().plane_linear_triton
    assert run(torch.ones(0, 9, device=device), layout.tensors, 7).shape == (0, 7)
    assert run(torch.ones(2, 0, 9, device=device), layout.tensors, 7).shape == (2, 0, 7)
    with pytest.raises(ValueError, match="float64"):
        run(torch.ones(1, 9, dtype=torch.float64, device=device), layout.tensors, 7)
    with pytest.raises(ValueError, match="out_features"):
        run(torch.ones(1, 9, device=device), layout.tensors, 8)


def test_path_policy():
    p = plane_matmul()
    config = [p.plane_config(t, torch.float16, 3) for t in (1, 5, p.DECODE_MAX_TOKENS, p.DECODE_MAX_TOKENS + 1, 40,
                                                             1000)]
    assert [c.constexprs["DOT"] for c in config] == [False, False, False, True, True, True]
    assert [c.block_t for c in config] == [1, 8, 8, 16, 64, 128]
    assert p.plane_config(1000, torch.float32, 3).block_t == p.DOT_MAX_BLOCK_T[torch.float32]
    assert p.plane_config(40, torch.float32, 3, dot=False).block_t == p.DECODE_MAX_TOKENS
    assert p.plane_config(1, torch.float32, 3, dot=True).block_t == 16
    assert all(c.constexprs["PLANES"] == 3 for c in config)


def _register_triton_on_cpu(monkeypatch) -> None:
    """The cpu device gets the triton backend for op plane_linear, through the same dispatch as CUDA."""
    key = (kernels.PlaneLayout.op, "cpu")
    monkeypatch.setitem(dispatch._REGISTRY[key], "triton", "bqq_kernels.gpu.plane_matmul:plane_linear_triton")
    monkeypatch.setitem(dispatch._TRAITS, (*key, "triton"), dispatch._TRITON)
    monkeypatch.setitem(dispatch._RESOLVED, (*key, "triton"), plane_matmul().plane_linear_triton)


@needs_kernel
def test_bqq_linear_runs_the_triton_backend(monkeypatch):
    device = devices()[0]
    if device == "cpu":
        _register_triton_on_cpu(monkeypatch)
    layout, dense = compressed(matrix(37, 53, seed=4), 3, "uq", (10, 16))
    m, n = layout.shape
    gen = torch.Generator().manual_seed(0)
    bias = torch.randn(m, generator=gen).to(device)
    for dtype, tokens in ((torch.float32, 3), (torch.float16, 16), (torch.bfloat16, 2)):
        x = torch.randn(2, tokens, n, generator=gen).to(device, dtype)
        out = kernels.bqq_linear(x, layout, bias, backend="triton")  # bias cast to x's dtype, fused
        assert out.shape == (2, tokens, m) and out.dtype == dtype
        ref = expected(x.reshape(-1, n), dense.to(device), bias.to(dtype), uses_dot(2 * tokens, dtype, layout))
        assert rel_err(out.reshape(-1, m), ref) < TOLERANCE[dtype]


def test_forward_reads_no_tensor_on_the_host(monkeypatch):
    """Structural check of the no-sync promise (CUDA graphs, no stalls): from bqq_linear down to the kernel
    launch no tensor value reaches Python. The launch is recorded instead of run (the interpreter itself
    copies tensors to the host), so this runs without a GPU on CPU tensors."""
    module = plane_matmul()
    calls: list = []
    monkeypatch.setattr(module, "_plane_kernel", RecordedLaunch(calls))
    _register_triton_on_cpu(monkeypatch)
    layout = random_plane_layout((7, 13), (9, 12, 5), 3)
    m, n = layout.shape
    bias = torch.randn(m, dtype=torch.float16)
    inputs = [torch.randn(t, n).half() for t in (1, 9, 40)]
    for name in ("tolist", "item", "cpu", "numpy", "__int__", "__float__", "__bool__", "__index__", "__array__"):
        monkeypatch.setattr(torch.Tensor, name, refuse_host_read)
    with torch.no_grad():
        for x in inputs:
            kernels.bqq_linear(x, layout, bias, backend="triton")
    monkeypatch.undo()
    assert len(calls) == len(inputs)  # one launch per forward
    for grid, args, kwargs in calls:
        assert all(type(v) is int and v > 0 for v in grid), grid
        for value in (*args, *kwargs.values()):
            assert isinstance(value, torch.Tensor) or type(value) in (int, bool, str) or \
                type(value).__module__.startswith("triton"), type(value)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("tokens", [1, 16, 300])
def test_cuda_forward_has_no_sync_and_replays_in_a_cuda_graph(tokens):
    layout, _ = compressed(matrix(64, 256, seed=5), 4, "uq", (1, 128))
    layout = layout.to("cuda")
    for dtype in DTYPES:
        bias = torch.randn(64, device="cuda", dtype=dtype)
        x = torch.randn(tokens, 256, device="cuda", dtype=dtype)
        with torch.no_grad():
            eager = kernels.bqq_linear(x, layout, bias)  # compiles the kernel (not capturable)
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                again = kernels.bqq_linear(x, layout, bias)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            assert torch.equal(eager, again)
            graph = torch.cuda.CUDAGraph()
            static_x = x.clone()
            with torch.cuda.graph(graph):
                static_out = kernels.bqq_linear(static_x, layout, bias)
            static_x.copy_(torch.randn_like(x))
            graph.replay()
            torch.testing.assert_close(static_out, kernels.bqq_linear(static_x, layout, bias), rtol=0, atol=0)


def test_plane_kernel_compiles_for_hopper_without_a_gpu():
    """Triton lowers the plane kernel's launch configurations to sm_90 machine code with the ptxas it ships
    (the interpreter skips lowering): tensor cores on the dot path, CUDA cores only on the other, no register
    spills."""
    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip("this Triton has no NVIDIA backend")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    command = [sys.executable, "-m", "bqq_kernels.gpu.compile_check", "--op", "plane_linear", "--quick", "--json"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {row["variant"]: row for row in json.loads(result.stdout.strip().splitlines()[-1])}
    assert len(rows) == 6, sorted(rows)  # fp16, fp32 x (1 token, 8 tokens, dot), 8 planes
    if "reg" not in rows["plane dot B8 float16"]:
        pytest.skip("no cuobjdump to read the machine code")
    for name, row in rows.items():
        assert (row["HGMMA"] + row["HMMA"] > 0) == name.startswith("plane dot"), row
        assert row["stack"] == 0 and row["LDL"] == row["STL"] == 0, row
