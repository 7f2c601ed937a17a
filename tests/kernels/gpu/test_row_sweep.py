"""The Triton row sweep of the BQQ solver (kernels/gpu/row_sweep.py) against the numba row phase; its lowering
for sm_90. Without a GPU the kernel runs in Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET=1):
shapes here are small. With a GPU the same tests run on CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from bqq_kernels.cpu.binary_factorization import row_phase
from bqq_kernels.gpu import row_sweep
from tests.kernels.gpu.common import sweep_inputs, triton_test_device

DEVICE = triton_test_device()


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize(("shape", "launch"), [
    ((3, 37, 29, 11), None),  # uneven rows, l = 11: one program per problem, one block
    ((2, 45, 70, 40), {"block_rows": 16, "block_cols": 16, "num_warps": 1, "unroll": 2}),  # 3 row blocks, 16+16+8
])
def test_kernel_matches_numba_sweep(shape, launch, hard):
    x, v, u, g, alpha, inv_temp = sweep_inputs(*shape, hard=hard)
    h = np.matmul(x, v)
    t = lambda a: np.ascontiguousarray(a.transpose(0, 2, 1))  # noqa: E731  (the CPU phase is entry-major)
    expected_t = t(u)
    flips_cpu = row_phase(t(x), expected_t, t(v), g, alpha, inv_temp, hard)
    expected = expected_t.transpose(0, 2, 1)
    ut = torch.from_numpy(u.transpose(0, 2, 1).copy()).to(DEVICE)
    ht = torch.from_numpy(h.transpose(0, 2, 1).copy()).to(DEVICE)
    opts = launch or row_sweep.launch_options(shape[1], shape[3])
    flips = row_sweep.row_sweep(ht, ut, torch.from_numpy(g).to(DEVICE), torch.from_numpy(alpha).to(DEVICE),
                                torch.from_numpy(inv_temp).to(DEVICE), hard, **opts)
    got = ut.cpu().numpy().transpose(0, 2, 1)
    assert np.abs(got - expected).max() <= 1e-5
    if hard:  # (the CPU row phase counts sign changes in hard sweeps only)
        assert int(flips) == flips_cpu
        assert np.array_equal(np.abs(got), np.ones_like(got))


def test_kernel_rejects_bad_input():
    ut = torch.zeros(1, 4, 8, device=DEVICE)
    with pytest.raises(ValueError, match="shapes do not match"):
        row_sweep.row_sweep(ut, ut, torch.zeros(1, 3, 3, device=DEVICE), torch.ones(1, device=DEVICE),
                            torch.ones(1, device=DEVICE), False)
    with pytest.raises(ValueError, match="power of two"):
        row_sweep.row_sweep(ut, ut, torch.zeros(1, 4, 4, device=DEVICE), torch.ones(1, device=DEVICE),
                            torch.ones(1, device=DEVICE), False, block_rows=24)


def test_kernel_compiles_for_hopper_without_spills():
    """The interpreter skips Triton's lowering: compile the kernel for sm_90 (ptxas from the Triton wheel)
    in a process without TRITON_INTERPRET, and check the default launch keeps everything in registers."""
    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip("this Triton has no NVIDIA backend")
    code = "import json; from bqq_kernels.gpu.row_sweep import compile_report; print(json.dumps(compile_report()))"
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert [row["hard"] for row in rows] == [False, True]
    if "reg" not in rows[0]:
        pytest.skip("no cuobjdump to read the machine code")
    for row in rows:
        assert row["stack"] == 0 and row["LDL"] == row["STL"] == 0, row
        assert row["SHFL"] == 0 and row["LDS"] == 0 and row["shared_bytes"] == 0, row  # rows stay in their threads
