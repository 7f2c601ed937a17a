"""Data-aware quantization: H collection, the output-aware BQQ solver and refit, GPTQ, the calibrated model pass."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bqq
from bqq.grouping import GroupGrid
from bqq.methods.bqq import BQQConfig, inner_dim
from bqq.methods.gptq import encode_rows
from bqq.methods.uniform import encode
from bqq.ptq import runner as ptq_runner
from bqq.ptq.hessian import collect_cross_moments, collect_hessians, input_stages
from bqq.ptq.runner import layer_seed
from bqq.solver import (
    GroupCodes,
    NumpyBackend,
    StackSettings,
    clipped_channels,
    column_blocks,
    damped,
    prepare_hessian,
    refit_scalars,
    solve_sign_factors,
)
from bqq.solver.stacks import grow_grid, solve_task
from bqq_kernels.cpu import coupled_row_sweep, row_phase
from bqq_kernels.cpu import gram_blocks as gram
from tests.helpers import FAST, tiny

SOLVE = {"sweeps": 80, "t_start": 0.95, "t_end": 0.18, "alpha_scale": 0.9, "polish_rounds": 50}


def anisotropic_inputs(n: int, rows: int, seed: int) -> np.ndarray:
    """(rows, n) correlated inputs with a few outlier channels, like real activations."""
    rng = np.random.default_rng(seed)
    mix = np.eye(n) + 0.3 * rng.standard_normal((n, n))
    scale = np.ones(n)
    scale[rng.choice(n, 4, replace=False)] = 6.0
    return rng.standard_normal((rows, n)) @ mix * scale


def output_error(w: np.ndarray, w_hat: np.ndarray, h: np.ndarray) -> float:
    e = w - w_hat
    return float(np.trace(e @ h @ e.T))


# --- H from hooks -----------------------------------------------------------------------------------
def test_hessian_of_a_linear_skips_padding_tokens():
    torch.manual_seed(0)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(20, 6)
            self.lin = nn.Linear(6, 4)

        def forward(self, input_ids, attention_mask):
            return self.lin(self.embed(input_ids))

    model = Model()
    batches = [{"input_ids": torch.randint(0, 20, (3, 5)), "attention_mask": torch.tensor([[1] * 5, [1] * 3 + [0] * 2,
                                                                                          [1] * 1 + [0] * 4])}
               for _ in range(2)]
    (h, count), = collect_hessians(model, ["lin"], batches).values()
    rows = torch.cat([model.embed(b["input_ids"])[b["attention_mask"].bool()] for b in batches]).double()
    assert count == rows.shape[0] == 2 * 9
    torch.testing.assert_close(h, rows.T @ rows, rtol=1e-5, atol=1e-5)


def test_hessian_of_a_conv_is_over_its_patches():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel_size=3, stride=2, padding=1)
    model = nn.Sequential(conv)
    data = [torch.randn(2, 2, 7, 7) for _ in range(3)]
    (h, count), = collect_hessians(model, ["0"], data).values()
    direct = torch.zeros(18, 18, dtype=torch.float64)
    for x in data:  # every patch the kernel multiplies, read out directly
        xp = F.pad(x, (1, 1, 1, 1)).double()
        for i in range(0, 7, 2):
            for j in range(0, 7, 2):
                patch = xp[:, :, i:i + 3, j:j + 3].reshape(2, -1)  # (C, kh, kw) order, as the weight's rows
                direct += patch.T @ patch
    assert count == 3 * 2 * 16
    torch.testing.assert_close(h, direct, rtol=1e-5, atol=1e-5)
    # And H really is the output error's weight: Σ‖(ΔW) x‖² = tr(ΔW H ΔWᵀ).
    delta = torch.randn(3, 18, dtype=torch.float64)
    out = sum(((F.conv2d(x.double(), delta.reshape(3, 2, 3, 3), stride=2, padding=1)) ** 2).sum() for x in data)
    torch.testing.assert_close(out, torch.trace(delta @ h @ delta.T), rtol=1e-5, atol=1e-5)


def test_input_stages_group_layers_that_read_one_tensor():
    model = tiny()
    stages = input_stages(model, [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))],
                          torch.randn(2, 3, 8, 8))
    assert stages[:4] == [["patch"], ["blocks.0.qkv"], ["blocks.0.proj"], ["blocks.0.fc1"]]
    assert stages[-1] == ["head"] and sum(len(s) for s in stages) == 10


class _TwoHeads(nn.Module):
    """Two linears on one input (q and k), a third on another."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.out = nn.Linear(6, 4), nn.Linear(6, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.out(self.q(x) + self.k(x))


def test_layers_reading_one_tensor_share_one_sum_equal_to_their_own():
    torch.manual_seed(0)
    model, data = _TwoHeads(), [torch.randn(5, 6) for _ in range(3)]
    stats = collect_hessians(model, ["q", "k", "out"], data)
    assert stats["q"][0] is stats["k"][0] and stats["q"][0] is not stats["out"][0]
    alone = collect_hessians(model, ["k"], data)["k"]
    assert torch.equal(stats["k"][0], alone[0]) and stats["k"][1] == alone[1] == 15
    moments = collect_cross_moments(model, copy.deepcopy(model), ["q", "k"], data)
    assert moments["q"][1] is moments["k"][1] and torch.equal(moments["k"][0], alone[0])


# --- the output-aware solver ------------------------------------------------------------------------
@pytest.mark.parametrize("stacks", [1, 2])
def test_weighted_refit_equals_a_least_squares_solve(stacks):
    rng = np.random.default_rng(stacks)
    m, n, l = 9, 11, 5
    w = rng.standard_normal((m, n))
    ys = rng.integers(0, 2, (stacks, m, l))
    zs = rng.integers(0, 2, (stacks, l, n))
    x = anisotropic_inputs(n, 200, 3)
    h = x.T @ x
    scales, offset = refit_scalars(w, ys, zs, h)
    # Direct: minimize Σ_x ‖(W - Ŵ) x‖² = ‖(W - Ŵ) Xᵀ‖² as an ordinary least squares over the 3p+1 features.
    feats = []
    for y, z in zip(ys, zs, strict=True):
        feats += [y @ z, np.repeat(y.sum(1, keepdims=True), n, 1), np.repeat(z.sum(0, keepdims=True), m, 0)]
    feats.append(np.ones((m, n)))
    design = np.stack([(f @ x.T).ravel() for f in feats], axis=1)
    coef = np.linalg.lstsq(design, (w @ x.T).ravel(), rcond=None)[0]
    np.testing.assert_allclose(np.append(scales.ravel(), offset), coef, rtol=1e-7, atol=1e-9)


def test_coupled_sweep_with_identity_weight_is_the_row_sweep():
    rng = np.random.default_rng(0)
    b, n, m, l = 2, 13, 10, 7
    x = rng.standard_normal((b, m, n)).astype(np.float32)
    u = rng.uniform(-1, 1, (b, m, l)).astype(np.float32)
    v1 = rng.uniform(-1, 1, (b, n, l)).astype(np.float32)
    v2 = v1.copy()
    k = gram(np.ascontiguousarray(u.transpose(0, 2, 1)))
    alpha = np.full(b, 0.3, np.float32)
    beta = np.full(b, 2.0, np.float32)
    p = np.matmul(x.transpose(0, 2, 1), u)
    for hard in (False, True):
        v1t = np.ascontiguousarray(v1.transpose(0, 2, 1))  # the row phase's entry-major factors
        flips1 = row_phase(x, v1t, np.ascontiguousarray(u.transpose(0, 2, 1)), k, alpha, beta, hard)
        v1 = v1t.transpose(0, 2, 1)
        eye = np.repeat(np.eye(n, dtype=np.float32)[None], b, axis=0)
        flips2 = coupled_row_sweep(p, np.matmul(v2, k), v2, k, eye, alpha, beta, hard)
        np.testing.assert_allclose(v1, v2, atol=1e-6)
        if hard:  # (the row phase counts sign changes in hard sweeps only)
            assert flips1 == flips2


def test_coupled_sweep_lowers_the_weighted_energy_when_hard():
    rng = np.random.default_rng(1)
    n, m, l = 12, 8, 5
    xh = rng.standard_normal((n, 40))
    hm = (xh @ xh.T / 40).astype(np.float32)[None]
    x = rng.standard_normal((1, m, n)).astype(np.float32)
    u = np.sign(rng.standard_normal((1, m, l))).astype(np.float32)
    v = np.sign(rng.standard_normal((1, n, l))).astype(np.float32)
    alpha = np.array([0.4], np.float32)

    def energy(v):
        e = x[0] - alpha[0] * u[0] @ v[0].T
        return float(np.trace(e @ hm[0] @ e.T))

    before = energy(v)
    k = gram(np.ascontiguousarray(u[0].T)[None])
    p = np.matmul(np.matmul(x, hm).transpose(0, 2, 1), u)
    coupled_row_sweep(p, np.matmul(v, k), v, k, hm, alpha, np.zeros(1, np.float32), True)
    assert energy(v) < before
    assert set(np.unique(v)) <= {-1.0, 1.0}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_output_aware_search_beats_the_data_free_one_under_h(seed):
    rng = np.random.default_rng(seed)
    m, n = 24, 32
    w = rng.standard_normal((m, n))
    x = anisotropic_inputs(n, 500, seed + 10)
    h = prepare_hessian(x.T @ x) + 0.01 * np.eye(n)
    l = inner_dim((m, n), 1.0)
    fits = []
    for weight in (None, h[None]):
        u, v = solve_sign_factors(w[None], l, [(seed,)], hessian=weight, **SOLVE)
        ys, zs = (u > 0).astype(np.uint8), (v > 0).astype(np.uint8).transpose(0, 2, 1)
        scales, offset = refit_scalars(w, ys, zs, h)  # both judged with their best scalars under H
        y, z = ys[0].astype(float), zs[0].astype(float)
        (r, s, t), = scales
        fits.append(output_error(w, r * y @ z + s * y.sum(1, keepdims=True) + t * z.sum(0, keepdims=True) + offset, h))
    data_free, aware = fits
    assert aware < 0.9 * data_free


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


def test_column_blocks_split_the_output_error_exactly():
    rng = np.random.default_rng(2)
    x = anisotropic_inputs(23, 300, 1)
    h = prepare_hessian(x.T @ x) + 0.1 * np.eye(23)
    w, w_hat = rng.standard_normal((5, 23)), rng.standard_normal((5, 23))
    blocks = column_blocks(h, [7, 9, 7])
    target, total = w.copy(), 0.0
    for cs, schur, carry in blocks:
        error = target[:, cs] - w_hat[:, cs]  # block k's error against its carried target
        total += np.trace(error @ schur @ error.T)
        if carry is not None:
            target[:, cs.stop:] += error @ carry
    assert total == pytest.approx(output_error(w, w_hat, h), rel=1e-10)
    # The last block is solved under its own block of H; the first under its Schur complement.
    np.testing.assert_allclose(blocks[-1][1], h[16:, 16:], atol=1e-10)
    schur = h[:7, :7] - h[:7, 7:] @ np.linalg.solve(h[7:, 7:], h[7:, :7])
    np.testing.assert_allclose(blocks[0][1], schur, atol=1e-10)
    assert column_blocks(h, [23])[0][1] is h


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


def solved_in_parts(size: int, calls: list[int]):
    """A ``map_solves`` for :func:`grow_grid` that solves each task here in parts of ``size`` groups and
    records how many tasks each call got."""
    def map_solves(tasks):
        calls.append(len(tasks))
        return [GroupCodes.stack([solve_task(part) for part in task.split(size)]) for task in tasks]
    return map_solves


def test_grow_grid_gives_the_same_codes_whatever_solves_its_groups():
    # 36 x 24 in 8 x 8 groups: 3 column blocks, each with four 8 x 8 groups and one 4 x 8 (two tasks).
    rng = np.random.default_rng(4)
    w = rng.standard_normal((36, 24))
    x = anisotropic_inputs(24, 300, 5)
    h = damped(prepare_hessian(x.T @ x), 0.1)
    grid = GroupGrid.build(w.shape, (8, 8))
    config = BQQConfig(sweeps=40)
    ranks = [inner_dim(shape, config.rank_scale) for shape in grid.group_shapes()]

    def grow(codes, map_solves=None):
        return grow_grid(NumpyBackend(), w, grid, codes, 1, seed=7, first_group=3, ranks=ranks,
                         settings=lambda shape, rank, weighted: StackSettings.of(config, shape, rank, weighted),
                         hessian=h, map_solves=map_solves)

    empty = [GroupCodes(*NumpyBackend().empty_codes(1, shape, rank))
             for shape, rank in zip(grid.group_shapes(), ranks, strict=True)]
    reference = grow(grow(empty))  # the second stack extends codes: the parts split those too
    for size in (1, 2, 3):
        calls = []
        spread = grow(grow(empty, solved_in_parts(size, calls)), solved_in_parts(size, calls))
        assert calls == [2] * 6  # per column block: its 8 x 8 groups, its 4 x 8 group
        for a, b in zip(reference, spread, strict=True):
            assert all(np.array_equal(x, y) for x, y in zip((a.ys, a.zs, a.scales, a.offset),
                                                            (b.ys, b.zs, b.scales, b.offset), strict=True))


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


def test_bad_hessians_are_refused():
    w = np.random.default_rng(0).standard_normal((6, 8))
    with pytest.raises(ValueError, match=r"hessian must be \(8, 8\)"):
        bqq.compress(w, 1, hessian=np.eye(7))
    with pytest.raises(ValueError, match=r"hessian.*NaN"):
        bqq.compress(w, 1, hessian=np.full((8, 8), np.nan))
    with pytest.raises(ValueError, match="no positive diagonal"):
        bqq.compress(w, 1, hessian=np.zeros((8, 8)))
    with pytest.raises(TypeError, match="does not use a hessian"):
        bqq.compress(w, 2, method="bcq", hessian=np.eye(8))
    with pytest.raises(ValueError, match="damping"):
        bqq.compress(w, 1, hessian=np.eye(8), damping=-1)
    with pytest.raises(ValueError, match="damping"):
        bqq.compress(w, 2, method="gptq", hessian=np.eye(8), damping=0)


# --- GPTQ -------------------------------------------------------------------------------------------
def test_gptq_reuses_the_factor_of_the_same_hessian_only_while_it_lives():
    from bqq.methods import gptq
    x = np.random.default_rng(0).standard_normal((50, 8))
    h = x.T @ x / 50
    first = gptq.inverse_factor(h, 0.01)
    np.testing.assert_allclose(first.T @ first, np.linalg.inv(h + 0.01 * np.eye(8)), rtol=1e-10)
    assert gptq.inverse_factor(h, 0.01) is first  # the same H object: no new factorization
    assert gptq.inverse_factor(h, 0.1) is not first  # other damping
    copy_h = h.copy()
    assert gptq.inverse_factor(copy_h, 0.1) is not gptq.inverse_factor(h, 0.1)  # another object
    del h, copy_h
    assert gptq._last_factor[0] is None  # the H died: its factor is released


def test_encode_rows_equals_uq_encode():
    rng = np.random.default_rng(0)
    x, lo, step = rng.standard_normal(50), rng.standard_normal(50), rng.uniform(0, 0.5, 50)
    step[:5] = 0
    expected = [encode(np.array([xi]), li, si, 3)[0] for xi, li, si in zip(x, lo, step, strict=True)]
    assert encode_rows(x, lo, step, 3).tolist() == expected


@pytest.mark.parametrize("group_size", [None, 8, (1, 12), (5, 7)])
def test_gptq_with_identity_h_is_round_to_nearest(group_size):
    w = np.random.default_rng(1).standard_normal((10, 24))
    uq = bqq.compress(w, 2, method="uq", group_size=group_size)
    gptq = bqq.compress(w, 2, method="gptq", group_size=group_size, hessian=np.eye(24), block_size=5, coarse_step=1)
    no_data = bqq.compress(w, 2, method="gptq", group_size=group_size, coarse_step=1)  # UQ's full grid search
    for q in (gptq, no_data):
        assert all(np.array_equal(a, b) for a, b in zip(q.codes, uq.codes, strict=True))
        assert np.array_equal(q.scale, uq.scale) and np.array_equal(q.zero, uq.zero)


def test_gptq_lowers_the_output_error_and_its_blocking_changes_nothing(tmp_path):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((16, 40))
    x = anisotropic_inputs(40, 300, 4)
    h = x.T @ x
    uq = bqq.compress(w, 2, method="uq", group_size=(4, 40))
    gptq = bqq.compress(w, 2, method="gptq", group_size=(4, 40), hessian=h)
    err_gptq = output_error(w, gptq.dequantize().double().numpy(), h)
    err_uq = output_error(w, uq.dequantize().double().numpy(), h)
    assert err_gptq < 0.9 * err_uq
    blocked = bqq.compress(w, 2, method="gptq", group_size=(4, 40), hessian=h, block_size=7)
    np.testing.assert_allclose(blocked.dequantize(), gptq.dequantize())
    bqq.save(gptq, tmp_path / "g.safetensors")
    loaded = bqq.load(tmp_path / "g.safetensors")
    assert loaded.method == "gptq" and torch.equal(loaded.dequantize(), gptq.dequantize())


# --- the calibrated model pass ----------------------------------------------------------------------
BASIS = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(7))


def calibration_batches(count: int = 4):
    """Images near a 5-dimensional subspace: correlated inputs, as real data has (white noise has H ≈ I)."""
    batches = []
    for i in range(count):
        gen = torch.Generator().manual_seed(100 + i)
        coef = torch.randn(8, 5, generator=gen)
        noise = 0.1 * torch.randn(8, 3, 8, 8, generator=gen)
        batches.append(((coef @ BASIS.reshape(5, -1)).reshape(8, 3, 8, 8) + noise,))
    return batches


def outputs(model, batches):
    with torch.no_grad():
        return torch.cat([model(x) for (x,) in batches])


def test_a_calibrated_layer_equals_compress_with_its_hessian():
    data = calibration_batches()
    stats = collect_hessians(tiny(), ["blocks.1.fc1"], data)
    model = bqq.quantize(tiny(), bits=2, method="bqq", group_size=16, seed=4,
                         calibration=bqq.Calibration(data, inputs="float"), **FAST)
    w = tiny().blocks[1].fc1.weight.detach()
    expected = bqq.compress(w, 2, group_size=16, seed=layer_seed(4, "blocks.1.fc1"),
                            hessian=stats["blocks.1.fc1"][0], **FAST)
    assert torch.equal(model.blocks[1].fc1.qweight.dequantize(), expected.dequantize())
    assert model.blocks[1].fc1.selection["objective"] == "output"


@pytest.mark.parametrize("inputs", ["quantized", "float", "corrected"])
def test_calibrated_auto_beats_data_free_on_held_out_inputs(inputs, tmp_path):
    fp = tiny()
    batches = calibration_batches(24)
    data, held_out = batches[:16], batches[16:]
    free = bqq.quantize(tiny(), bits=2, **FAST)
    aware = bqq.quantize(tiny(), bits=2, calibration=bqq.Calibration(data, inputs=inputs), **FAST)
    ref = outputs(fp, held_out)
    err = {name: float(((outputs(m, held_out) - ref) ** 2).mean()) for name, m in (("free", free), ("aware", aware))}
    assert err["aware"] < 0.85 * err["free"]  # measured: 0.76 (quantized inputs), 0.69 (float), 0.30 (corrected)
    assert all("gptq" in layer.selection["candidates"] for _, layer in quantized_layers(aware))
    bqq.save_quantized(aware, tmp_path / "aware.safetensors")
    restored = bqq.load_quantized(tmp_path / "aware.safetensors", tiny(seed=9))
    assert torch.equal(outputs(restored, held_out), outputs(aware, held_out))


def test_corrected_inputs_fit_the_float_model_from_quantized_inputs():
    fp = tiny()
    batches = calibration_batches(24)
    data, held_out = batches[:16], batches[16:]
    ref = outputs(fp, held_out)
    err = {}
    for inputs in ("quantized", "corrected"):
        q = bqq.quantize(tiny(), bits=2, method="gptq", calibration=bqq.Calibration(data, inputs=inputs))
        err[inputs] = float(((outputs(q, held_out) - ref) ** 2).mean())
    assert err["corrected"] < 0.7 * err["quantized"]  # measured: 0.53


def test_cross_moments_pair_the_float_and_the_quantized_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    reference = copy.deepcopy(model)
    with torch.no_grad():
        model[0].weight.add_(0.3 * torch.randn(8, 6))  # the "quantized" first layer
    data = [torch.randn(5, 6) for _ in range(3)]
    (h, cross, count), = collect_cross_moments(model, reference, ["2"], data).values()
    x = torch.cat([torch.relu(reference[0](b)) for b in data]).double().detach()
    x_q = torch.cat([torch.relu(model[0](b)) for b in data]).double().detach()
    assert count == 15
    torch.testing.assert_close(h, x_q.T @ x_q)
    torch.testing.assert_close(cross, x.T @ x_q)
    # Before anything is quantized both sides agree: C equals H (and the corrected target is W itself).
    _, same_cross, _ = collect_cross_moments(reference, copy.deepcopy(reference), ["2"], data)["2"]
    torch.testing.assert_close(same_cross, collect_hessians(reference, ["2"], data)["2"][0])


def quantized_layers(model):
    return bqq.ptq.quantized_layers(model)


def test_calibrated_quantize_resumes_from_its_cache(tmp_path):
    data = calibration_batches()
    first = bqq.quantize(tiny(), bits=1, calibration=data, cache_dir=tmp_path, **FAST)
    files = sorted(p.name for p in tmp_path.iterdir())
    second = bqq.quantize(tiny(), bits=1, calibration=data, cache_dir=tmp_path, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    x = calibration_batches(5)[4:]
    assert torch.equal(outputs(first, x), outputs(second, x))


@pytest.fixture(scope="module")
def spread_case():
    """A calibrated BQQ pass whose layers have several column and row blocks (8 x 8 groups), solved in this
    process: its settings and the model."""
    settings = {"bits": 2, "method": "bqq", "group_size": (8, 8),
                "calibration": bqq.Calibration(calibration_batches(), inputs="float"), **FAST}
    return settings, bqq.quantize(tiny(), **settings)


def assert_same_model(a, b):
    for (name, qa), (_, qb) in zip(quantized_layers(a), quantized_layers(b), strict=True):
        assert torch.equal(qa.qweight.dequantize(), qb.qweight.dequantize()), name
    x = calibration_batches(5)[4:]
    assert torch.equal(outputs(a, x), outputs(b, x))


def spy_on_map_solves(monkeypatch) -> list[int]:
    """Record the column blocks whose groups the model pass hands out as tasks."""
    calls, real = [], ptq_runner._map_solves

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(ptq_runner, "_map_solves", spy)
    return calls


def spread_blocks(model) -> int:
    """Column blocks of the layers that spread their groups (several row blocks)."""
    return sum(len(q.qweight.grid.col_sizes) for _, q in quantized_layers(model) if len(q.qweight.grid.row_sizes) > 1)


def test_calibrated_bqq_spreads_its_groups_over_processes_with_the_same_codes(spread_case, monkeypatch, tmp_path):
    settings, reference = spread_case
    calls = spy_on_map_solves(monkeypatch)
    parallel = bqq.quantize(tiny(), workers=2, cache_dir=tmp_path, **settings)
    assert len(calls) == spread_blocks(reference) > 0  # the head (5 rows: one row block) stays one job
    assert_same_model(parallel, reference)
    resumed = bqq.quantize(tiny(), workers=2, cache_dir=tmp_path, **settings)  # every layer from the cache
    assert len(calls) == spread_blocks(reference)
    assert_same_model(resumed, reference)


def test_calibrated_bqq_spreads_its_groups_over_dask(spread_case, monkeypatch):
    distributed = pytest.importorskip("distributed")
    settings, reference = spread_case
    calls = spy_on_map_solves(monkeypatch)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        q = bqq.quantize(tiny(), workers=client.get_executor(), **settings)
    assert len(calls) == spread_blocks(reference)
    assert_same_model(q, reference)


def test_layers_without_data_fall_back_to_data_free():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.used(x)

    torch.manual_seed(0)
    model = bqq.quantize(Branchy(), bits=2, group_size=None, calibration=[torch.randn(4, 8)], **FAST)
    assert model.used.selection["objective"] == "output"
    assert model.unused.selection["objective"] == "weight"


def test_calibration_settings_are_checked():
    with pytest.raises(ValueError, match="inputs must be one of"):
        bqq.Calibration([torch.zeros(1)], inputs="fp")
    with pytest.raises(ValueError, match="does nothing"):
        bqq.Calibration([torch.zeros(1)], output_aware=False)
    with pytest.raises(ValueError, match="no batches"):
        bqq.quantize(tiny(), bits=1, calibration=[], **FAST)


# --- Hugging Face transformers --------------------------------------------------------------------
def test_a_transformers_model_quantizes_with_token_batches_and_round_trips(tmp_path):
    pytest.importorskip("transformers")  # the [hf] extra; CI installs it
    from bqq.compat import import_transformers

    transformers = import_transformers()
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=16)

    def fresh(seed: int):
        torch.manual_seed(seed)
        return transformers.BertModel(config).eval()

    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        ids = torch.randint(0, 50, (6, 12), generator=gen)
        mask = (torch.arange(12)[None] < torch.randint(4, 13, (6, 1), generator=gen)).long()
        batches.append({"input_ids": ids, "attention_mask": mask})
    model = bqq.quantize(fresh(0), bits=2, include="encoder.*", calibration=batches, **FAST)
    layers = dict(bqq.ptq.quantized_layers(model))
    assert len(layers) == 12 and all(layer.selection["objective"] == "output" for layer in layers.values())
    assert layers["encoder.layer.0.intermediate.dense"].qweight.group_shape == (32, 32)  # config.hidden_size

    bqq.save_quantized(model, tmp_path / "bert.safetensors")
    restored = bqq.load_quantized(tmp_path / "bert.safetensors", fresh(1))
    with torch.no_grad():
        for batch in batches:
            assert torch.equal(restored(**batch).last_hidden_state, model(**batch).last_hidden_state)


def test_a_massive_input_channel_is_capped_before_bqq_sees_it():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 12))
    x[:, 3] *= 40.0  # one "massive activation" channel
    h = prepare_hessian(x.T @ x)
    capped = clipped_channels(h, 3.0)
    diag = np.diag(capped)
    assert diag[3] <= 3.0 * np.median(diag) * (1 + 1e-9)
    assert np.trace(capped) == pytest.approx(12.0)
    # Correlations are kept: the cap rescales channels, it does not decorrelate them.
    corr = lambda m: m / np.sqrt(np.outer(np.diag(m), np.diag(m)))  # noqa: E731
    np.testing.assert_allclose(corr(capped), corr(h), atol=1e-12)
    np.testing.assert_allclose(clipped_channels(h, 1e9), h, rtol=1e-12)


def test_auto_compares_candidates_with_massive_channels_capped():
    """A candidate that reproduces one huge input channel and wrecks the others must not win."""
    from bqq.ptq.quantize import relative_error, select

    class Rebuilt:  # the one thing select() reads from a candidate
        def __init__(self, w_hat):
            self.w_hat = w_hat

        def _dequantize64(self):
            return self.w_hat

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 32))
    h = np.eye(32)
    h[5, 5] = 600.0  # a massive activation channel
    h = prepare_hessian(h)
    channel_only = w + rng.standard_normal(w.shape)  # every column off by ~100 % ...
    channel_only[:, 5] = w[:, 5]  # ... except the massive one, exact
    the_rest = w + 0.1 * rng.standard_normal(w.shape)
    the_rest[:, 5] = 0.0
    candidates = {"a": Rebuilt(channel_only), "b": Rebuilt(the_rest)}
    assert relative_error(w, candidates["a"], h) < relative_error(w, candidates["b"], h)  # raw H ranks it first
    best, info = select(candidates, w, h)
    assert best is candidates["b"] and info["objective"] == "output"
