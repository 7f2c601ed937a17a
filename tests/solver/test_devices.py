"""`device=` in bqq.compress / bqq.quantize: the torch/Triton solver behind the public API.

Without a GPU the Triton kernel runs in Triton's interpreter on CPU tensors; these tests then route the
CPU through the device path (``TORCH_SOLVER_DEVICE_TYPES``) and keep the problems tiny.
"""

import numpy as np
import pytest
import torch

import bqq
from bqq.methods import bqq as bqq_method
from bqq.solver import devices
from tests.helpers import tiny

pytest.importorskip("triton")
from bqq_kernels.gpu import interpreted

SMALL = {"sweeps": 12, "polish_rounds": 5}


@pytest.fixture
def cpu_through_device_path(monkeypatch):
    if not interpreted():
        pytest.skip("the Triton kernels are compiled here (a GPU machine): they take CUDA tensors only")
    monkeypatch.setattr(devices, "TORCH_SOLVER_DEVICE_TYPES", {"cuda", "cpu"})


def mse(w, q):
    return float(((w - q.dequantize().double().numpy()) ** 2).mean())


def test_compress_on_the_device_path_matches_the_cpu_solver(cpu_through_device_path):
    w = np.random.default_rng(0).standard_normal((20, 30))
    on_device = bqq.compress(w, 2, group_size=(10, 15), seed=1, device="cpu", **SMALL)
    devices.TORCH_SOLVER_DEVICE_TYPES.discard("cpu")
    on_cpu = bqq.compress(w, 2, group_size=(10, 15), seed=1, device="cpu", **SMALL)
    assert mse(w, on_device) == pytest.approx(mse(w, on_cpu), rel=0.02)
    devices.TORCH_SOLVER_DEVICE_TYPES.add("cpu")
    again = bqq.compress(w, 2, group_size=(10, 15), seed=1, device="cpu", **SMALL)
    assert all(np.array_equal(a, b) for a, b in zip(on_device.y, again.y, strict=True))  # deterministic
    assert np.array_equal(on_device.scales, again.scales)
    continued = bqq.compress(w, 1, group_size=(10, 15), seed=1, device="cpu", **SMALL).extend(1, device="cpu")
    assert all(np.array_equal(a, b) for a, b in zip(on_device.z, continued.z, strict=True))
    assert np.array_equal(on_device.offset, continued.offset)


def output_error(w, q, h):
    e = w - q.dequantize().double().numpy()
    return float(np.trace(e @ bqq.solver.prepare_hessian(h) @ e.T))


def test_compress_with_a_hessian_on_the_device_path_matches_the_cpu_solver(cpu_through_device_path):
    """The output-aware search, refit and column blocks (Schur complements) on the torch backend."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 12))
    x = rng.standard_normal((60, 12)) * np.linspace(0.3, 2.0, 12)
    x[:, 1] *= 6  # an outlier channel
    h = x.T @ x
    opts = {"bits": 2, "group_size": (8, 6), "seed": 2, "hessian": h, "sweeps": 10, "polish_rounds": 5}
    on_device = bqq.compress(w, device="cpu", **opts)
    devices.TORCH_SOLVER_DEVICE_TYPES.discard("cpu")
    on_cpu = bqq.compress(w, device="cpu", **opts)
    data_free = bqq.compress(w, device="cpu", **{**opts, "hessian": None})
    assert output_error(w, on_device, h) == pytest.approx(output_error(w, on_cpu, h), rel=0.02)
    assert output_error(w, on_device, h) < output_error(w, data_free, h)


def test_quantize_solves_same_shape_groups_of_all_layers_together(cpu_through_device_path, tmp_path, monkeypatch):
    calls = []
    real = bqq_method.BQQMatrix.quantize_many.__func__

    def spy(cls, matrices, *args, **kwargs):
        calls.append(len(matrices))
        return real(cls, matrices, *args, **kwargs)

    monkeypatch.setattr(bqq_method.BQQMatrix, "quantize_many", classmethod(spy))
    model = bqq.quantize(tiny(), bits=1, method="bqq", include="blocks.*", device="cpu", cache_dir=tmp_path, **SMALL)
    # 24x24 groups: qkv 3 + proj 1 + fc1 2 + fc2 2 per block, two blocks: one call for all 16.
    assert calls == [16]
    reference = bqq.quantize(tiny(), bits=1, method="bqq", include="blocks.*", cache_dir=tmp_path, **SMALL)
    assert calls == [16]  # the second run loaded every group from the cache
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_calibrated_quantize_solves_bqq_layers_on_the_device(cpu_through_device_path, monkeypatch):
    """Calibrated (H) BQQ layers go to the torch backend too, each under its own H; the model then computes
    about what the CPU solver's does."""
    devices_seen = []
    real = bqq_method.BQQMatrix._add_stacks

    def spy(self, w, count, progress, hessian=None, device=None, **kwargs):
        devices_seen.append((hessian is not None, device))
        return real(self, w, count, progress, hessian, device, **kwargs)

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 6)).eval()

    monkeypatch.setattr(bqq_method.BQQMatrix, "_add_stacks", spy)
    x = torch.randn(40, 12, generator=torch.Generator().manual_seed(1))
    opts = {"bits": 1, "method": "bqq", "calibration": bqq.Calibration([x[:20], x[20:]]), "sweeps": 8,
            "polish_rounds": 3}
    on_device = bqq.quantize(model(), device="cpu", **opts)
    assert len(devices_seen) == 2 and all(h and d == torch.device("cpu") for h, d in devices_seen)
    devices_seen.clear()
    devices.TORCH_SOLVER_DEVICE_TYPES.discard("cpu")
    on_cpu = bqq.quantize(model(), device="cpu", **opts)
    assert len(devices_seen) == 2 and all(h and d is None for h, d in devices_seen)
    with torch.no_grad():
        fp = model()(x)
        error_device = float(((on_device(x) - fp) ** 2).mean())
        error_cpu = float(((on_cpu(x) - fp) ** 2).mean())
    assert error_device == pytest.approx(error_cpu, rel=0.5)  # same objective, different sweep order


def test_a_cuda_device_without_a_gpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    w = np.random.default_rng(0).standard_normal((8, 8))
    with pytest.raises((RuntimeError, ValueError), match=r"(?i)cuda|gpu"):
        bqq.compress(w, 1, device="cuda", sweeps=5)
    with pytest.raises(ValueError, match="device must be"):
        bqq.compress(w, 1, device="gpu0", sweeps=5)
    with pytest.raises(ValueError, match="CPU or on CUDA"):
        bqq.compress(w, 1, device="meta", sweeps=5)


def test_groups_solved_together_on_the_device_get_the_codes_they_get_alone(cpu_through_device_path):
    from bqq.methods.bqq import BQQConfig, BQQMatrix

    rng = np.random.default_rng(3)
    groups = [rng.standard_normal((12, 12)) * scale for scale in (0.1, 1.0, 10.0)]
    config = BQQConfig(sweeps=2, polish_tolerance=0.05)
    device = torch.device("cpu")
    together = BQQMatrix.quantize_many(groups, 2, [7] * 3, [0, 1, 2], config, device)
    for g, matrix in enumerate(groups):
        alone = BQQMatrix.quantize_many([matrix], 2, [7], [g], config, device)[0]
        assert np.array_equal(alone._dequantize64(), together[g]._dequantize64())
