"""The batched first-order methods (UQ, BCQ, GPTQ: all groups of a layer in one compiled call) against
straightforward per-group references: the same clip ranges, codes, scales and signs up to rounding ties."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch

import bqq
import bqq_kernels.cpu.first_order as first_order
from bqq.format import pack_bits
from bqq.grouping import GroupGrid
from bqq.methods import available_methods, get_method
from bqq.methods.bcq import BCQConfig, BCQMatrix, binary_code
from bqq.methods.gptq import GPTQConfig, GPTQMatrix, _gptq_codes, encode_rows
from bqq.methods.uniform import UQConfig, UQMatrix, clip_ranges, encode, group_blocks, search_clip_range
from bqq.quantized import QuantizedMatrix
from bqq.solver import damped
from bqq.solver.hessian_math import upper_inverse_factor

GRIDS = [(1, 50), (5, 7), (10, 50)]  # on a 37×50 matrix: per row, small uneven tiles, uneven row blocks


# --- references: the per-group code this replaces -----------------------------------------------

def reference_search(x: np.ndarray, bits: int, points: int) -> tuple[float, float]:
    """The per-group prefix-sum search (paper Alg. S.1) as it was before batching."""
    xs = np.sort(x)
    levels = 2**bits
    mu = min(max(float(x.mean()), xs[0]), xs[-1])
    p1 = np.concatenate([[0.0], np.cumsum(xs - mu)])
    p2 = np.concatenate([[0.0], np.cumsum((xs - mu) ** 2)])
    his, los = np.linspace(mu, xs[-1], points), np.linspace(xs[0], mu, points)
    k = np.arange(levels, dtype=np.float64)
    lo = los[:, None, None]
    scale = (his[None, :, None] - lo) / (levels - 1)
    cuts = np.searchsorted(xs, (lo + (k[:-1] + 0.5) * scale).ravel(), side="right").reshape(points, points, -1)
    zeros = np.zeros((points, points, 1), dtype=cuts.dtype)
    begin, end = np.concatenate([zeros, cuts], axis=-1), np.concatenate([cuts, zeros + xs.size], axis=-1)
    c = lo + k * scale - mu
    errors = (p2[end] - p2[begin] - 2 * c * (p1[end] - p1[begin]) + (end - begin) * c * c).sum(axis=-1)
    i, j = np.unravel_index(np.argmin(errors), errors.shape)
    return float(los[i]), float(his[j])


def clip_error(x: np.ndarray, lo: float, hi: float, bits: int) -> float:
    """Squared error of x on the levels lo + j·(hi − lo)/(2^b − 1), nearest level (encode's rule)."""
    scale = (hi - lo) / (2**bits - 1)
    return float(((x - (lo + encode(x, lo, scale, bits) * scale)) ** 2).sum())


def reference_uq(w: np.ndarray, grid: GroupGrid, bits: int, points: int = 100) -> UQMatrix:
    codes, zero, scale = [], np.empty(len(grid), np.float32), np.empty(len(grid), np.float32)
    for g, x in enumerate(grid.split(w)):
        lo, hi = reference_search(x.ravel(), bits, points)
        zero[g], scale[g] = lo, (hi - lo) / (2**bits - 1)
        k = encode(x, float(zero[g]), float(scale[g]), bits).astype(np.uint8)
        codes.append(pack_bits(np.stack([(k >> j) & 1 for j in range(bits)])))
    return UQMatrix(w.shape, "float64", grid, bits, 0, UQConfig(points), codes=codes, scale=scale, zero=zero)


def gaussian(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def grid_of(shape, group) -> GroupGrid:
    return GroupGrid.build(shape, group)


def assert_same_uq(a: UQMatrix, b: UQMatrix) -> None:
    np.testing.assert_array_equal(a.zero, b.zero)
    np.testing.assert_array_equal(a.scale, b.scale)
    for x, y in zip(a.codes, b.codes, strict=True):
        np.testing.assert_array_equal(x, y)


# --- the clip-range search -----------------------------------------------------------------------

@pytest.mark.parametrize("bits", range(1, 9))
def test_batched_search_equals_the_per_group_search(bits):
    """Generic groups of every size the two evaluations cover (the prefix-sum form from k >= 7.5·4^b)."""
    rng = np.random.default_rng(bits)
    points = 100 if bits <= 4 else 24  # the reference's (N, N, 2^b) arrays grow with b
    for k in (3, 9, 40, 130, 500):
        x = rng.standard_normal((3, k)) ** 3 + rng.standard_normal((3, 1))  # skewed, off-centre
        lo, hi = clip_ranges(x, bits, points)
        for g in range(len(x)):
            ref = reference_search(x[g], bits, points)
            assert (lo[g], hi[g]) == ref, (k, g)
            assert clip_error(x[g], lo[g], hi[g], bits) <= clip_error(x[g], *ref, bits) * (1 + 1e-9)


@pytest.mark.parametrize("bits", range(1, 9))
def test_direct_and_prefix_sum_evaluations_agree(bits, monkeypatch):
    x = gaussian((6, 60), seed=bits) * np.exp(gaussian((6, 1), seed=20 + bits))
    found = []
    for prefix in (False, True):
        monkeypatch.setattr(first_order, "prefer_prefix_sums", lambda levels, k, prefix=prefix: prefix)
        found.append(clip_ranges(x, bits, 40))
    np.testing.assert_array_equal(found[0][0], found[1][0])
    np.testing.assert_array_equal(found[0][1], found[1][1])


def test_large_groups_find_level_cuts_by_binary_search():
    """Beyond 150 values per hi candidate the prefix-sum form searches the cuts instead of walking to them."""
    x = gaussian((2, 2000), seed=3) ** 3
    assert first_order.prefer_prefix_sums(8, 2000) and 2000 > first_order._WALK_MAX_K_PER_CANDIDATE * 10
    for bits in (1, 3):
        lo, hi = clip_ranges(x, bits, 10)
        for g in range(2):
            assert (lo[g], hi[g]) == reference_search(x[g], bits, 10)


def test_search_never_worse_than_the_per_group_search_on_tiny_groups():
    """Groups of 1..6 values (exact fits, near ties): the error may differ from the reference only by rounding."""
    rng = np.random.default_rng(7)
    for bits in range(1, 9):
        for k in range(1, 7):
            x = rng.standard_normal((2, k))
            lo, hi = clip_ranges(x, bits, 30)
            for g in range(len(x)):
                ref = clip_error(x[g], *reference_search(x[g], bits, 30), bits)
                assert clip_error(x[g], lo[g], hi[g], bits) <= ref * (1 + 1e-9) + 1e-28


def test_constant_and_single_value_groups_get_lo_equal_hi():
    x = np.array([[0.1] * 9, [-3.0] * 9, [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]])
    for bits in (1, 2, 8):
        lo, hi = clip_ranges(x, bits, 100)
        np.testing.assert_array_equal(lo, hi)
        np.testing.assert_array_equal(lo, x[:, 0])
        lo, hi = clip_ranges(np.array([[1.5], [-0.25]]), bits, 100)  # groups of one value
        np.testing.assert_array_equal(lo, [1.5, -0.25])
        np.testing.assert_array_equal(hi, [1.5, -0.25])
    assert search_clip_range(np.full(10, 0.1), 3, 100) == (0.1, 0.1)


def test_encode_kernel_equals_encode():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 400))
    for bits in (1, 3, 8):
        lo = rng.standard_normal(5).astype(np.float32).astype(np.float64)
        step = np.abs(rng.standard_normal(5)).astype(np.float32).astype(np.float64) / 2**bits
        step[0] = 0.0
        x[1, :3] = lo[1] + (np.arange(3) + 0.5) * step[1]  # exactly on bounds: ties go down
        codes = first_order.encode_uniform(x, lo, step, 2**bits)
        for g in range(5):
            np.testing.assert_array_equal(codes[g], encode(x[g], lo[g], step[g], bits))


# --- UQ and GPTQ ---------------------------------------------------------------------------------

@pytest.mark.parametrize("group", GRIDS)
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_uq_equals_the_per_group_path(group, bits):
    w = gaussian((37, 50), seed=bits)
    grid = grid_of(w.shape, group)
    points = 100 if bits <= 2 else 40  # the reference's (N, N, 2^b) arrays grow with b
    assert_same_uq(UQMatrix.quantize(w, grid, bits, 0, UQConfig(points), progress=False),
                   reference_uq(w, grid, bits, points))


def test_uq_float32_input_and_error_not_worse():
    w32 = gaussian((37, 50), seed=4).astype(np.float32)
    w = w32.astype(np.float64)
    for group in GRIDS:
        q = bqq.compress(w32, bits=3, method="uq", group_size=group)
        ref = reference_uq(w, q.grid, 3)
        assert_same_uq(q, ref)
        assert q.dequantize().dtype == torch.float32
        new = ((q.dequantize(torch.float64).numpy() - w) ** 2).sum()
        old = ((ref.dequantize().numpy() - w) ** 2).sum()
        assert new <= old * (1 + 1e-9)


def test_uq_constant_groups_and_groups_of_one():
    w = gaussian((6, 9))
    w[:3] = 0.375  # three constant rows
    q = bqq.compress(w, bits=2, method="uq", group_size=(1, 9))
    assert (q.scale[:3] == 0).all()
    np.testing.assert_array_equal(q.dequantize().numpy()[:3], w[:3])
    q = bqq.compress(w, bits=4, method="uq", group_size=1)  # 54 groups of one value: rebuilt to FP32
    np.testing.assert_array_equal(q.dequantize().numpy(), w.astype(np.float32).astype(np.float64))


def test_uq_on_an_unbalanced_grid():
    """A grid from parts of any sizes (runs 3, 5, 3 and 4, 4, 2): blocks per run, same result."""
    w = gaussian((11, 10), seed=5)
    grid = GroupGrid((3, 5, 3), (4, 4, 2))
    assert len(group_blocks(grid)) == 6
    assert_same_uq(UQMatrix.quantize(w, grid, 2, 0, UQConfig(), progress=False), reference_uq(w, grid, 2))


@pytest.mark.parametrize("group", GRIDS)
@pytest.mark.parametrize("with_h", [False, True])
def test_gptq_equals_the_per_group_path(group, with_h):
    w = gaussian((37, 50), seed=8)
    grid = grid_of(w.shape, group)
    x = gaussian((200, 50), seed=9) * np.exp(gaussian(50, seed=10))
    h = bqq.solver.prepare_hessian(x.T @ x) if with_h else None
    q = GPTQMatrix.quantize(w, grid, 3, 0, GPTQConfig(coarse_step=1), progress=False, hessian=h)
    ref = reference_uq(w, grid, 3)  # UQ's grids; the codes follow GPTQ's loop
    np.testing.assert_array_equal(q.zero, ref.zero)
    np.testing.assert_array_equal(q.scale, ref.scale)
    factor = None if h is None else upper_inverse_factor(damped(h, 0.01))
    codes = _gptq_codes(w, grid, ref.zero, ref.scale, 3, factor, 128, False)
    for g, (_, _, rs, cs) in enumerate(grid.blocks()):
        np.testing.assert_array_equal(q.codes[g], pack_bits(np.stack([(codes[rs, cs] >> j) & 1 for j in range(3)])))
    if not with_h:
        assert_same_uq(q, ref)


def _numpy_gptq(w, lo, step, cols, bits, chol, block):
    """GPTQ's column loop in plain numpy (the form the compiled block kernel replaces)."""
    work, codes = w.copy(), np.empty(w.shape, np.uint8)
    n = w.shape[1]
    for start in range(0, n, block):
        stop = min(start + block, n)
        errors = np.empty((w.shape[0], stop - start))
        for j in range(start, stop):
            k = encode_rows(work[:, j], lo[:, cols[j]], step[:, cols[j]], bits)
            codes[:, j] = k
            errors[:, j - start] = err = (work[:, j] - (lo[:, cols[j]] + k * step[:, cols[j]])) / chol[j, j]
            work[:, j + 1:stop] -= np.outer(err, chol[j, j + 1:stop])
        work[:, stop:] -= errors @ chol[start:stop, stop:]
    return codes


@pytest.mark.parametrize("bits", [2, 4])
def test_gptq_block_kernel_equals_the_numpy_column_loop(bits):
    w = gaussian((29, 70), seed=3)
    grid = grid_of(w.shape, (1, 16))
    ref = reference_uq(w, grid, bits)
    x = gaussian((300, 70), seed=4) * np.exp(gaussian(70, seed=5))
    chol = upper_inverse_factor(damped(bqq.solver.prepare_hessian(x.T @ x), 0.01))
    rows = np.repeat(np.arange(len(grid.row_sizes)), grid.row_sizes)
    cols = np.repeat(np.arange(len(grid.col_sizes)), grid.col_sizes)
    lo = ref.zero.astype(np.float64).reshape(len(grid.row_sizes), -1)[rows]
    step = ref.scale.astype(np.float64).reshape(len(grid.row_sizes), -1)[rows]
    expected = _numpy_gptq(w, lo, step, cols, bits, chol, 32)
    np.testing.assert_array_equal(_gptq_codes(w, grid, ref.zero, ref.scale, bits, chol, 32, False), expected)
    assert (expected != _gptq_codes(w, grid, ref.zero, ref.scale, bits, None, 32, False)).any()  # feedback acted


# --- BCQ -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("group", GRIDS)
@pytest.mark.parametrize("bits", range(1, 9))
def test_bcq_equals_the_per_group_path(group, bits):
    """Groups of 35 to 500 values: the same signs, α up to rounding, every group with its own stop."""
    w = gaussian((37, 50), seed=bits)
    grid = grid_of(w.shape, group)
    q = BCQMatrix.quantize(w, grid, bits, 0, BCQConfig(), progress=False)
    for g, x in enumerate(grid.split(w)):
        alpha, planes = binary_code(x.ravel(), bits, 15)
        np.testing.assert_array_equal(q.signs[g], pack_bits(planes.reshape(bits, *x.shape)))
        np.testing.assert_allclose(q.alpha[g], alpha.astype(np.float32), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rounds", [0, 1, 3])
def test_bcq_round_limits(rounds):
    w = gaussian((12, 40), seed=rounds)
    q = BCQMatrix.quantize(w, grid_of(w.shape, (1, 40)), 3, 0, BCQConfig(rounds), progress=False)
    for g in range(12):
        alpha, planes = binary_code(w[g], 3, rounds)
        np.testing.assert_array_equal(q.signs[g], pack_bits(planes.reshape(3, 1, 40)))
        np.testing.assert_allclose(q.alpha[g], alpha.astype(np.float32), rtol=1e-6, atol=1e-7)


def test_bcq_tiny_and_constant_groups():
    """Fewer values than 2^b (a singular sign Gram: the minimum-norm α) and constant groups."""
    rng = np.random.default_rng(11)
    for bits in (2, 4, 8):
        x = rng.standard_normal((16, 3))
        x[0] = 0.5
        x[1] = 0.0
        alpha, planes = first_order.bcq_fit(x, bits, 15)
        assert np.isfinite(alpha).all()
        for g in range(len(x)):
            rebuilt = alpha[g] @ (2.0 * planes[g] - 1.0)
            ref_alpha, ref_planes = binary_code(x[g], bits, 15)
            ref = ((ref_alpha @ (2.0 * ref_planes - 1.0) - x[g]) ** 2).sum()
            assert ((rebuilt - x[g]) ** 2).sum() <= ref * (1 + 1e-6) + 1e-24
        np.testing.assert_allclose(alpha[0] @ (2.0 * planes[0] - 1.0), 0.5, rtol=1e-12)
        assert not alpha[1].any()
    q = bqq.compress(np.full((4, 6), -1.25), bits=3, method="bcq", group_size=(1, 6))
    np.testing.assert_allclose(q.dequantize().numpy(), -1.25, rtol=1e-6)


# --- shared behaviour ----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["uq", "bcq", "gptq"])
def test_deterministic_for_any_thread_count(method):
    w = gaussian((64, 96), seed=12)
    kwargs = {"bits": 3, "method": method, "group_size": (1, 96)}
    first = bqq.compress(w, **kwargs)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        serial = bqq.compress(w, **kwargs)
    finally:
        numba.set_num_threads(threads)
    again = bqq.compress(w, **kwargs)
    for other in (serial, again):
        for name, value in first.fields().items():
            np.testing.assert_array_equal(value, other.fields()[name])


@pytest.mark.parametrize("method", ["uq", "bcq"])
def test_vectorized_dequantize_equals_the_group_merge(method):
    w = gaussian((37, 50), seed=13)
    for group in GRIDS:
        q = bqq.compress(w, bits=3, method=method, group_size=group)
        merged = q.grid.merge([q.dequantize_group(i) for i in range(len(q.grid))])
        np.testing.assert_array_equal(q.dequantize().numpy(), merged)


def test_batched_groups_flag():
    assert QuantizedMatrix.batched_groups is False
    batched = {m for m in available_methods() if get_method(m).batched_groups}
    assert {"uq", "bcq", "gptq"} <= batched
    assert "bqq" not in batched
