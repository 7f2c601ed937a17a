"""BQQ method ("bqq", bqq.methods.bqq): accounting, quality, determinism, extend, grouping, the output-aware solve
under a hessian (what every method keeps: test_contract.py)."""

from __future__ import annotations

import itertools

import numba
import numpy as np
import pytest
import torch

import bqq
import bqq_kernels
from bqq.methods.bqq import BQQConfig, auto_sweeps, inner_dim
from bqq.solver import (
    StackSettings,
    refit_scalars,
)
from tests.helpers import anisotropic_inputs, output_error

FAST = {"sweeps": 150}


def mse(q, w):
    return float(((q.dequantize().double().numpy() - w) ** 2).mean())


def fields_equal(a, b):
    fa, fb = a.fields(), b.fields()
    return fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_dequantize_keeps_shape_and_dtype(dtype):
    w = torch.randn(40, 24, generator=torch.Generator().manual_seed(0)).to(dtype)
    q = bqq.compress(w, bits=1, **FAST)
    out = q.dequantize()
    assert out.shape == (40, 24) and out.dtype == dtype


def test_numpy_input_comes_back_in_its_dtype(gaussian):
    q = bqq.compress(gaussian.astype(np.float32), bits=1, **FAST)
    assert q.dequantize().dtype == torch.float32


def test_inner_dimension_follows_rank_scale():
    assert inner_dim((384, 384), 1.0) == 192
    assert inner_dim((128, 128), 1.0) == 64
    assert inner_dim((384, 384), 1.5) == 288
    assert inner_dim((100, 96), 1.0) == 49  # round(48.98)
    assert inner_dim((1, 1), 1.0) == 1  # never 0
    q = bqq.compress(np.random.default_rng(0).standard_normal((30, 50)), bits=1, rank_scale=0.5, **FAST)
    assert q.ranks == [round(0.5 * 30 * 50 / 80)]


def test_bits_per_weight_counts_binaries_and_every_scalar():
    w = np.random.default_rng(0).standard_normal((70, 45))
    q = bqq.compress(w, bits=3, group_size=(32, 20), **FAST)
    # balanced splits: rows 70 -> 24, 23, 23; cols 45 -> 15, 15, 15
    assert q.grid.row_sizes == (24, 23, 23) and q.grid.col_sizes == (15, 15, 15)
    expected = 0
    for m in (24, 23, 23):
        for n in (15, 15, 15):
            rank = round(m * n / (m + n))
            expected += 3 * rank * (m + n) + 32 * (3 * 3 + 1)
    assert q.total_bits == expected
    assert q.bits_per_weight == pytest.approx(expected / (70 * 45), rel=0, abs=1e-12)
    assert q.nbytes >= expected / 8  # packing pads rows to whole bytes


def test_error_decreases_with_stacks(gaussian):
    q = bqq.compress(gaussian, bits=1, **FAST)
    errors = [mse(q, gaussian)]
    for _ in range(3):
        errors.append(mse(q.extend(1), gaussian))
    assert all(b < 0.6 * a for a, b in itertools.pairwise(errors)), errors


def test_one_stack_beats_the_best_scalar_one_bit_quantizer(gaussian):
    # The optimal 1-bit scalar quantizer of a Gaussian has MSE 1 - 2/pi = 0.363.
    assert mse(bqq.compress(gaussian, bits=1), gaussian) < 0.345


@pytest.mark.parametrize("fixture", ["gaussian", "low_rank_noise"])
@pytest.mark.parametrize("bits", [1, 2, 3])
def test_bqq_beats_first_order_codes_at_equal_bits(fixture, bits, request):
    w = request.getfixturevalue(fixture)
    q = bqq.compress(w, bits=bits)
    err = mse(q, w)
    for method in ("uq", "bcq"):
        other = bqq.compress(w, bits=bits, method=method)
        assert q.bits_per_weight <= other.bits_per_weight + 0.1  # 3p+1 FP32 scalars on 64x64
        assert err < mse(other, w), (method, err, mse(other, w))


def test_same_seed_identical_bits_different_seed_different_bits(gaussian):
    a = bqq.compress(gaussian, bits=2, seed=3, **FAST)
    b = bqq.compress(gaussian, bits=2, seed=3, **FAST)
    c = bqq.compress(gaussian, bits=2, seed=4, **FAST)
    assert fields_equal(a, b)
    assert torch.equal(a.dequantize(), b.dequantize())
    assert not np.array_equal(a.y[0], c.y[0])


def test_results_do_not_depend_on_thread_count_or_batching():
    w = np.random.default_rng(2).standard_normal((96, 64))
    reference = bqq.compress(w, bits=2, group_size=32, **FAST)
    unbatched = bqq.compress(w, bits=2, group_size=32, batch_groups=1, **FAST)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        single_thread = bqq.compress(w, bits=2, group_size=32, **FAST)
    finally:
        numba.set_num_threads(threads)
    assert fields_equal(reference, unbatched)
    assert fields_equal(reference, single_thread)


def test_extend_equals_compressing_with_more_bits(gaussian):
    full = bqq.compress(gaussian, bits=3, group_size=(32, 64), **FAST)
    step = bqq.compress(gaussian, bits=1, group_size=(32, 64), **FAST).extend(2)
    assert step.stacks == step.bits == 3
    assert fields_equal(full, step)


def test_extend_keeps_earlier_binaries(gaussian):
    q = bqq.compress(gaussian, bits=2, **FAST)
    y_before, z_before = q.y[0].copy(), q.z[0].copy()
    q.extend(1)
    assert np.array_equal(q.y[0][:2], y_before) and np.array_equal(q.z[0][:2], z_before)


def test_extend_after_load_needs_the_original(tmp_path, gaussian):
    q = bqq.compress(gaussian, bits=1, **FAST)
    bqq.save(q, tmp_path / "q.safetensors")
    loaded = bqq.load(tmp_path / "q.safetensors")
    with pytest.raises(ValueError, match="original matrix"):
        loaded.extend(1)
    with pytest.raises(ValueError, match="shape"):
        loaded.extend(1, w=gaussian[:10])
    assert fields_equal(loaded.extend(1, w=gaussian), q.extend(1))


def test_extend_rejects_bad_counts(gaussian):
    q = bqq.compress(gaussian, bits=1, **FAST)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            q.extend(bad)
    with pytest.raises(ValueError, match="maximum"):
        q.extend(16)


def test_uneven_groups_reconstruct_every_group(gaussian):
    w = np.random.default_rng(5).standard_normal((67, 53))
    q = bqq.compress(w, bits=3, group_size=(30, 25), **FAST)
    assert q.grid.grid_shape == (3, 3)
    err = (q.dequantize().double().numpy() - w) ** 2
    for _, _, rs, cs in q.grid.blocks():  # no group left unfitted
        assert err[rs, cs].mean() < 0.1 * (w[rs, cs] ** 2).mean()


@pytest.mark.parametrize("value", [0.0, 3.25, -7.0])
def test_constant_matrix_is_exact(value):
    w = np.full((20, 30), value)
    q = bqq.compress(w, bits=2, **FAST)
    assert np.allclose(q.dequantize().double().numpy(), w, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (17, 1), (2, 3)])
def test_tiny_shapes(shape):
    w = np.random.default_rng(0).standard_normal(shape)
    q = bqq.compress(w, bits=2, **FAST)
    assert q.dequantize().shape == shape
    assert mse(q, w) <= float(((w - w.mean()) ** 2).mean()) + 1e-9


def test_refit_recovers_exact_scalars():
    rng = np.random.default_rng(0)
    ys = rng.integers(0, 2, (2, 12, 5))
    zs = rng.integers(0, 2, (2, 5, 9))
    truth = np.array([[1.5, -0.25, 0.75], [-0.5, 0.125, 2.0]])
    w = np.full((12, 9), 0.3)
    for (r, s, t), y, z in zip(truth, ys, zs, strict=True):
        w += r * (y @ z) + s * y.sum(1, keepdims=True) + t * z.sum(0, keepdims=True)
    scales, offset = refit_scalars(w, ys, zs)
    assert np.allclose(scales, truth, atol=1e-9) and offset == pytest.approx(0.3, abs=1e-9)


def test_auto_sweeps_spends_equal_work_per_weight_within_bounds():
    assert auto_sweeps((1024, 1024), 512) == round(1.6e5 / 544) == 294
    assert auto_sweeps((384, 384), 192) == 714 and auto_sweeps((256, 256), 128) == 1000
    assert auto_sweeps((128, 128), 64) == 1667
    assert auto_sweeps((64, 64), 32) == 2400 and auto_sweeps((4096, 4096), 2048) == 200  # the bounds
    assert auto_sweeps((384, 384), 192, budget=7.68e4) == 343


def test_auto_sweeps_per_group_rule_spends_equal_work_per_group():
    assert auto_sweeps((384, 384), 192, rule="per_group") == round(1.0e10 / (768 * 192**2))  # 353
    assert auto_sweeps((192, 192), 96, weighted=True) == round(1.4e10 / (384 * 96**2 + 192**2 * 96))  # 1055
    assert auto_sweeps((384, 384), 192, budget=1.4e10, rule="per_group") == 494
    assert auto_sweeps((128, 128), 64, rule="per_group") == 6000 and auto_sweeps((1, 1), 1, rule="per_group") == 6000
    assert auto_sweeps((384, 1536), 307, rule="per_group") == 300
    with pytest.raises(ValueError, match="sweep rule"):
        auto_sweeps((8, 8), 4, rule="fast")


def test_weighted_sweep_budget_sets_the_output_aware_stacks_alone_down_to_fifty_sweeps():
    work = 512 * 128**2 + 256**2 * 128  # (m + n)·l² + n²·l of a 256² output-aware group
    aware = BQQConfig(sweep_budget=4e4, weighted_sweep_budget=100 * work)
    assert StackSettings.of(aware, (256, 256), 128, weighted=True).sweeps == 100
    assert StackSettings.of(aware, (256, 256), 128, weighted=False).sweeps == 250  # 4e4 / (128 + 32)
    assert StackSettings.of(BQQConfig(weighted_sweep_budget=1.0), (256, 256), 128, weighted=True).sweeps == 50
    # without it the output-aware stacks keep the tuned default and its floor of 300
    assert StackSettings.of(BQQConfig(sweep_budget=1.0), (256, 256), 128, weighted=True).sweeps == 300
    assert StackSettings.of(BQQConfig(), (256, 256), 128, weighted=True).sweeps == round(1.4e10 / work)


def test_configs_of_older_versions_keep_the_schedule_they_were_solved_with():
    from bqq.common import config_from_dict

    old = config_from_dict(BQQConfig, {"rank_scale": 1.0, "sweeps": None, "t_end": 0.18}, 2)
    assert (old.t_start, old.sweep_budget) == (0.95, 1.4e10)
    assert config_from_dict(BQQConfig, {"t_start": 0.8}, 2).t_start == 0.8  # what the file says wins
    assert BQQConfig().sweep_budget is None and BQQConfig().t_start == 0.6
    settings = StackSettings.of(old, (384, 384), 192, weighted=False)
    assert settings.sweeps == 494 and settings.t_start == 0.95
    with pytest.raises(ValueError, match="sweep_budget"):
        BQQConfig(sweep_budget=0)
    v3 = config_from_dict(BQQConfig, {"sweep_budget": None, "t_start": 0.6}, 3)
    assert (v3.sweep_rule, v3.polish_tolerance) == ("per_group", 0.0)
    assert StackSettings.of(v3, (384, 384), 192, weighted=False).sweeps == 353
    assert StackSettings.of(BQQConfig(), (384, 384), 192, weighted=False).sweeps == 714
    for bad in ({"sweep_rule": "fast"}, {"polish_tolerance": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            BQQConfig(**bad)


def test_groups_solved_together_get_the_codes_they_get_alone():
    """The polish stops per group on its own flip count, so a group's codes do not depend on its batch-mates
    (the model pass bundles groups on threads; compress batches a layer's groups)."""
    from bqq.methods.bqq import BQQMatrix

    rng = np.random.default_rng(3)
    groups = [rng.standard_normal((24, 24)) * scale for scale in (0.1, 1.0, 10.0, 1.0, 0.5)]
    config = BQQConfig(sweeps=2, polish_tolerance=0.05)  # a short anneal leaves the polish work to stop on
    together = BQQMatrix.quantize_many(groups, 2, [7] * 5, list(range(5)), config, None)
    for g, matrix in enumerate(groups):
        alone = BQQMatrix.quantize_many([matrix], 2, [7], [g], config, None)[0]
        assert np.array_equal(alone._dequantize64(), together[g]._dequantize64())


# --- the kernel of a grouped matrix ------------------------------------------------------------------

def test_compressed_grouped_matrix_runs_through_the_kernel():
    w = np.random.default_rng(0).standard_normal((70, 45)).astype(np.float32)
    q = bqq.compress(w, bits=2, group_size=(32, 20), sweeps=40)
    x = torch.randn(5, 45, generator=torch.Generator().manual_seed(0))
    out = bqq_kernels.bqq_linear(x, q.kernel_layout(), backend="numba-exact")
    torch.testing.assert_close(out, x @ q.dequantize().T, rtol=1e-5, atol=1e-5)
    table = bqq_kernels.bqq_linear(x, q.kernel_layout(), backend="numba-table")
    torch.testing.assert_close(table, out, rtol=1e-3, atol=1e-3)


# --- under a hessian (output-aware) ------------------------------------------------------------------

def test_compress_with_a_hessian_lowers_the_output_error_and_is_deterministic():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((20, 30))
    x = anisotropic_inputs(30, 400, 7)
    h = x.T @ x
    free = bqq.compress(w, 2, sweeps=80, seed=3)
    aware = bqq.compress(w, 2, sweeps=80, seed=3, hessian=h)
    again = bqq.compress(w, 2, sweeps=80, seed=3, hessian=torch.from_numpy(h))
    errors = [output_error(w, q.dequantize().double().numpy(), h) for q in (free, aware)]
    assert errors[1] < errors[0]
    assert all(np.array_equal(a, b) for a, b in zip(aware.y, again.y, strict=True))
    assert np.array_equal(aware.scales, again.scales)
    # Continuing under H refits every scalar under H: the output error does not rise.
    before = output_error(w, aware.dequantize().double().numpy(), h)
    aware.extend(1, hessian=h)
    assert output_error(w, aware.dequantize().double().numpy(), h) <= before


def test_column_groups_under_h_carry_their_errors():
    # Inputs with a strong component shared by all channels: the column groups' errors interact through
    # H's off-diagonal blocks. Solving the blocks in order with the error carried forward must beat
    # solving each block under its own diagonal block of H alone.
    rng = np.random.default_rng(3)
    n = 48
    x = rng.standard_normal((600, n)) + 2.0 * rng.standard_normal((600, 3)) @ rng.standard_normal((3, n))
    h = x.T @ x
    w = rng.standard_normal((16, n))
    carried = bqq.compress(w, 2, group_size=(16, 16), seed=1, hessian=h, sweeps=120, damping=0.01)
    apart = np.concatenate([bqq.compress(w[:, c:c + 16], 2, seed=1, hessian=h[c:c + 16, c:c + 16], sweeps=120,
                                         damping=0.01).dequantize().double().numpy() for c in range(0, n, 16)], 1)
    assert output_error(w, carried.dequantize().double().numpy(), h) < 0.8 * output_error(w, apart, h)


def test_output_aware_codes_do_not_depend_on_the_thread_count():
    """Many groups per column block: with 2 threads each takes a share of the groups through every sweep;
    with 1 the same sweeps run in turn. The codes must be the same."""
    import numba
    rng = np.random.default_rng(4)
    w = rng.standard_normal((64, 16))
    x = anisotropic_inputs(16, 200, 3)
    h = x.T @ x
    before = numba.get_num_threads()
    solved = []
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            solved.append(bqq.compress(w, 2, group_size=(8, 16), hessian=h, sweeps=30, seed=1))
    finally:
        numba.set_num_threads(before)
    assert len(solved[0].grid) == 8
    assert torch.equal(solved[0].dequantize(), solved[1].dequantize())
