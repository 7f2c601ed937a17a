"""The torch backend of the solver (bqq.solver.torch_backend) against the CPU backend (the Triton sweeps alone:
tests/kernels/gpu/test_row_sweep.py, test_coupled_sweep.py).

Without a GPU the Triton kernel runs in Triton's interpreter on CPU tensors (conftest sets
TRITON_INTERPRET=1), which is slow: shapes here are small. With a GPU the same tests run on CUDA.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from bqq import solver
from bqq.solver import anneal, devices, torch_backend
from bqq.solver.torch_backend import TorchBackend
from tests.kernels.gpu.common import triton_test_device

DEVICE = triton_test_device()

SETTINGS = {"t_start": 0.95, "t_end": 0.18, "alpha_scale": 0.9, "polish_rounds": 50}


def standardized_batch(count: int, m: int, n: int, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((count, m, n))
    return (x - x.mean(axis=(1, 2), keepdims=True)) / x.std(axis=(1, 2), keepdims=True)


def mse_after_refit(x: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per-problem MSE of the one-stack fit after the exact scalar refit (CPU reference functions)."""
    out = []
    for xb, ub, vb in zip(x, u, v, strict=True):
        y, z = (ub > 0).astype(np.float64), (vb > 0).astype(np.float64).T
        coef, off = solver.refit_scalars(xb, y[None], z[None])
        r, s, t = coef[0]
        fit = r * y @ z + s * y.sum(axis=1, keepdims=True) + t * z.sum(axis=0, keepdims=True) + off
        out.append(((xb - fit) ** 2).mean())
    return np.array(out)


def test_small_solve_matches_cpu_error():
    x = standardized_batch(2, 24, 20)
    seeds = [(0, 0, g, 0) for g in range(2)]
    u_cpu, v_cpu = solver.solve_sign_factors(x, 11, seeds, sweeps=20, **SETTINGS)
    u, v = solver.solve_sign_factors(x, 11, seeds, sweeps=20, backend=TorchBackend(DEVICE), **SETTINGS)
    assert u.shape == (2, 24, 11) and v.shape == (2, 20, 11) and u.dtype == torch.int8
    assert set(np.unique(u.cpu().numpy())) <= {-1, 1}
    cpu = mse_after_refit(x, u_cpu, v_cpu).mean()
    gpu = mse_after_refit(x, u.cpu().numpy(), v.cpu().numpy()).mean()
    assert abs(gpu / cpu - 1) <= 0.02, (gpu, cpu)


def test_same_seed_same_codes():
    x = standardized_batch(2, 16, 12, seed=3)
    seeds = [(7, 0, g, 0) for g in range(2)]
    runs = [solver.solve_sign_factors(x, 7, seeds, sweeps=4, backend=TorchBackend(DEVICE), **SETTINGS)
            for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_starts_are_the_cpu_starts():
    seeds = [(1, 2, 3, 0), (1, 2, 4, 0)]
    u, v = anneal.draw_starts(seeds, 5, 4, 3)
    rng = np.random.default_rng(np.random.SeedSequence([1, 2, 4, 0]))
    assert np.array_equal(u[1], rng.uniform(-0.01, 0.01, (5, 3)).astype(np.float32))
    assert np.array_equal(v[1], rng.uniform(-0.01, 0.01, (4, 3)).astype(np.float32))


def test_spectral_norm_and_sign_fit_error_match_cpu():
    from bqq_kernels.cpu import spectral_norm

    x = standardized_batch(3, 9, 13)
    x[2] = 0.0
    got = torch_backend.spectral_norm_torch(torch.from_numpy(x).to(DEVICE)).cpu().numpy()
    np.testing.assert_allclose(got, spectral_norm(x, solver.POWER_ITERATIONS), rtol=1e-12, atol=1e-12)
    rng = np.random.default_rng(0)
    u = np.where(rng.random((3, 9, 4)) < 0.5, 1, -1).astype(np.int8)
    v = np.where(rng.random((3, 13, 4)) < 0.5, 1, -1).astype(np.int8)
    err = solver.sign_fit_error(x, torch.from_numpy(u).to(DEVICE), torch.from_numpy(v).to(DEVICE),
                                backend=TorchBackend(DEVICE))
    np.testing.assert_allclose(err, solver.sign_fit_error(x, u, v), rtol=1e-12, atol=1e-12)
    h = np.repeat(solver.prepare_hessian(np.cov(np.random.default_rng(1).standard_normal((13, 40))))[None], 3, 0)
    err = solver.sign_fit_error(x, torch.from_numpy(u).to(DEVICE), torch.from_numpy(v).to(DEVICE), h,
                                backend=TorchBackend(DEVICE))
    np.testing.assert_allclose(err, solver.sign_fit_error(x, u, v, h), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "hessian"])
def test_batched_refit_equals_refit_scalars(weighted):
    rng = np.random.default_rng(0)
    nbatch, p, m, n, l = 4, 3, 17, 13, 7
    w = rng.standard_normal((nbatch, m, n))
    ys = (rng.random((nbatch, p, m, l)) < 0.5).astype(np.uint8)
    zs = (rng.random((nbatch, p, l, n)) < 0.5).astype(np.uint8)
    ys[1, 0] = 1  # degenerate designs: an all-ones Y, an all-zero Z
    zs[2, 1] = 0
    h = solver.prepare_hessian(np.cov(rng.standard_normal((n, 50)))) + 0.1 * np.eye(n) if weighted else None
    scales, offset = solver.refit_scalars_batched(w, ys, zs, h, device=DEVICE)
    assert scales.shape == (nbatch, p, 3) and scales.dtype == torch.float64
    for b in range(nbatch):
        coef, off = solver.refit_scalars(w[b], ys[b], zs[b], h)
        np.testing.assert_allclose(scales[b].cpu().numpy(), coef, rtol=1e-9, atol=1e-11)
        assert offset[b].item() == pytest.approx(off, rel=1e-9, abs=1e-11)


def test_quantize_groups_matches_cpu_stacks():
    """Two stacks of the device driver against the same steps written with the CPU solver."""
    from bqq.methods.bqq import BQQConfig

    cfg = BQQConfig(sweeps=6, polish_rounds=5)
    w = standardized_batch(2, 16, 12, seed=5)
    codes = torch_backend.quantize_groups_torch(w, 2, seed=3, group_ids=[4, 9], config=cfg, device=DEVICE)
    l = 7  # inner_dim((16, 12), 1.0)
    assert codes.ys.shape == (2, 2, 16, l) and codes.zs.shape == (2, 2, l, 12)
    assert codes.scales.dtype == torch.float32 and codes.offset.shape == (2,)
    kw = {k: getattr(cfg, k) for k in ("t_start", "t_end", "alpha_scale", "polish_rounds", "aspect_exponent")}
    ys = np.zeros((2, 0, 16, l), np.uint8)
    zs = np.zeros((2, 0, l, 12), np.uint8)
    residual = w.copy()
    for k in range(2):
        u, v = solver.solve_sign_factors(residual, l, [(3, k, g, 0) for g in (4, 9)], sweeps=6, **kw)
        ys = np.concatenate([ys, (u > 0).astype(np.uint8)[:, None]], axis=1)
        zs = np.concatenate([zs, (v > 0).astype(np.uint8).transpose(0, 2, 1)[:, None]], axis=1)
        fits = [solver.refit_scalars(w[b], ys[b], zs[b]) for b in range(2)]
        scales = torch.tensor(np.stack([c for c, _ in fits]), dtype=torch.float32)
        offset = torch.tensor([o for _, o in fits], dtype=torch.float32)
        residual = w - solver.GroupCodes(ys, zs, scales.numpy(), offset.numpy()).dequantize()
    cpu_mse = (residual ** 2).mean()
    gpu_mse = ((w - codes.dequantize().cpu().numpy()) ** 2).mean()
    assert abs(gpu_mse / cpu_mse - 1) <= 0.02, (gpu_mse, cpu_mse)
    # extend: one stack, then one more from those codes, equals two at once (as compress(2) = compress(1).extend(1))
    steps = []
    one = torch_backend.quantize_groups_torch(w, 1, seed=3, group_ids=[4, 9], config=cfg, device=DEVICE,
                                              progress=steps.append)
    two = torch_backend.quantize_groups_torch(w, 1, seed=3, group_ids=[4, 9], config=cfg, device=DEVICE,
                                              initial=one)
    assert steps == [2]
    assert torch.equal(two.ys, codes.ys) and torch.equal(two.zs, codes.zs)
    assert torch.equal(two.scales, codes.scales) and torch.equal(two.offset, codes.offset)


def test_memory_estimate():
    per = torch_backend.bytes_per_group((384, 384), 192, stacks=2)
    assert 16 * 384 * 384 < per < 40 * 384 * 384  # float64 target and residual, float32 state
    budget = torch_backend.TRANSIENT_BYTES + 10 * per
    assert torch_backend.groups_per_batch((384, 384), 192, budget, stacks=2) == 10
    assert torch_backend.groups_per_batch((384, 384), 192, 1, stacks=2) == 1
    assert torch_backend.bytes_per_group((384, 384), 192, restarts=2) > torch_backend.bytes_per_group((384, 384), 192)


def test_unsupported_device_is_refused():
    with pytest.raises(RuntimeError, match="CUDA"):
        devices.resolve_device("meta")


def test_missing_triton_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)
    for name in [k for k in sys.modules if k == "bqq_kernels.gpu" or k.startswith("bqq_kernels.gpu.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match="'triton' package"):
        devices.resolve_device(None)


