"""The Triton coupled (output-aware) row sweep (kernels/gpu/coupled_sweep.py) against the numba one; its lowering
for sm_90. Without a GPU the kernel runs in Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET=1)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from bqq_kernels.cpu import coupled_row_sweep
from bqq_kernels.cpu.binary_factorization import gram_blocks as gram
from bqq_kernels.gpu import coupled_sweep
from tests.kernels.gpu.common import sweep_inputs, triton_test_device

DEVICE = triton_test_device()


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_coupled_kernel_matches_numba_sweep(hard):
    rng = np.random.default_rng(2)
    nbatch, m, n, l = 2, 9, 11, 6
    _, _, u, _, alpha, inv_temp = sweep_inputs(nbatch, m, n, l, hard)
    v = rng.uniform(-1, 1, (nbatch, n, l)).astype(np.float32)
    if hard:
        v = np.where(v >= 0, 1, -1).astype(np.float32)
    xh = rng.standard_normal((n, 3 * n))
    hm = np.repeat((xh @ xh.T / (3 * n)).astype(np.float32)[None], nbatch, axis=0)
    p = rng.standard_normal((nbatch, n, l)).astype(np.float32)
    k = gram(np.ascontiguousarray(u.transpose(0, 2, 1)))
    expected = v.copy()
    flips_cpu = coupled_row_sweep(p, np.matmul(expected, k), expected, k, hm, alpha, inv_temp, hard)
    dev = {name: torch.from_numpy(a).to(DEVICE) for name, a in
           {"k": k, "h": hm, "alpha": alpha, "inv": inv_temp}.items()}
    vt = torch.from_numpy(v.transpose(0, 2, 1).copy()).to(DEVICE)
    qt = torch.bmm(dev["k"], vt)
    pt = torch.from_numpy(p.transpose(0, 2, 1).copy()).to(DEVICE)
    flips = coupled_sweep.coupled_row_sweep(pt, qt, vt, dev["k"], dev["h"], dev["alpha"], dev["inv"], hard)
    got = vt.cpu().numpy().transpose(0, 2, 1)
    assert np.abs(got - expected).max() <= 1e-4
    assert int(flips) == flips_cpu
    torch.testing.assert_close(qt, torch.bmm(dev["k"], vt), rtol=1e-4, atol=1e-4)  # q kept equal to K Vᵀ
    shared = coupled_sweep.coupled_row_sweep(pt, torch.bmm(dev["k"], vt), vt.clone(), dev["k"],
                                             dev["h"][:1].expand(nbatch, n, n), dev["alpha"], dev["inv"], hard)
    assert shared is not None  # a broadcast H (stride 0) is accepted


def test_coupled_kernel_compiles_for_hopper():
    """The coupled sweep lowers for sm_90 (Triton's lowering and ptxas, no GPU needed), soft and hard, with a
    small and a large inner dimension."""
    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip("this Triton has no NVIDIA backend")
    code = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from bqq_kernels.gpu.coupled_sweep import _coupled_sweep_kernel as kernel
kinds = dict.fromkeys(["p_ptr", "q_ptr", "v_ptr", "k_ptr", "h_ptr", "alpha_ptr", "beta_ptr"], "*fp32")
kinds |= {"flips_ptr": "*i32", "n": "i32", "l": "i32", "h_stride": "i64"}
for hard in (False, True):
    for block_l, block_o in ((64, 64), (256, 16)):
        consts = {"HARD": hard, "BLOCK_L": block_l, "BLOCK_O": block_o}
        sig = {k: "constexpr" if k in consts else kinds[k] for k in kernel.arg_names}
        triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": 4, "enable_fp_fusion": True})
print("compiled")
"""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-2000:]
