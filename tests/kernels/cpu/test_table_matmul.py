"""The register-table decode kernels (kernels/cpu/table_matmul.py) against the dense reference: the error
bound of 16-bit tables, the generic shuffle forced on this machine, odd shapes and uneven grids, every bit
width, and invariance to thread count and batch composition."""

import numba
import numpy as np
import pytest
import torch

import bqq_kernels as kernels
from bqq_kernels.cpu import table_matmul
from bqq_kernels.cpu.simd import SHUFFLE_KINDS, TABLE_BIAS, host_shuffle
from tests.helpers import random_weight, rel_err

TABLE_BACKENDS = ["numba-table", "numba-table-generic"]
# The tables round each entry to 1/32766 of the largest |subset sum| of its block: relative output
# errors are about 1e-5 on these random cases; BQQ's second table adds the rounding of its input v.
BQQ_TABLE_TOLERANCE = 2e-4


def random_planes(m: int, n: int, bits: int, col_sizes: list[int], seed: int = 0) -> kernels.PlaneLayout:
    """Random bit planes with per-row scalars on uneven column blocks (rows in one group: the kernels read
    scalars per row of each block)."""
    rng = np.random.default_rng(seed)
    planes = [np.packbits(rng.integers(0, 2, (bits, m, w), dtype=np.uint8), axis=-1, bitorder="little")
              for w in col_sizes]
    coef = rng.standard_normal((len(col_sizes), bits)).astype(np.float32)
    offset = rng.standard_normal(len(col_sizes)).astype(np.float32)
    layout = kernels.build_plane_layout((m, n), [m], col_sizes, planes, coef, offset)
    # per-row scalars, so that rows of one tile weigh their planes differently
    layout.tensors.coef.mul_(torch.from_numpy(rng.uniform(0.5, 2.0, (1, m, 1)).astype(np.float32)))
    return layout


def plane_error_bound(x: torch.Tensor, layout: kernels.PlaneLayout) -> torch.Tensor:
    """(T, M): the largest error the 16-bit tables allow: every lookup rounds by at most half a scale
    step, and a block of b bytes makes 2b lookups per plane (plus float32 slack)."""
    coef, col_start, col_size = layout.coef.double(), layout.col_start.tolist(), layout.col_size.tolist()
    bound = torch.zeros(x.shape[0], layout.shape[0], dtype=torch.float64)
    for b, (c0, width) in enumerate(zip(col_start, col_size, strict=True)):
        block = x[:, c0:c0 + width].double()
        pad = (-width) % 4
        chunks = torch.nn.functional.pad(block.abs(), (0, pad)).reshape(x.shape[0], -1, 4).sum(-1)
        step = chunks.max(dim=1).values / table_matmul.TABLE_PEAK  # (T,)
        lookups = 2 * ((width + 7) // 8)
        bound += 0.5 * lookups * step[:, None] * coef[b].abs().sum(-1)[None, :]
    return bound * 1.001 + 1e-5 * (x.double().abs() @ kernels.dequantize_layout(layout, torch.float64).abs().T)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("shape", [(70, [45]), (130, [64, 64, 19]), (64, [128, 96]), (3, [1200])],
                         ids=lambda s: f"{s[0]}x{sum(s[1])}")
def test_plane_tables_within_their_error_bound(bits, shape):
    m, col_sizes = shape
    layout = random_planes(m, sum(col_sizes), bits, col_sizes)
    w = kernels.dequantize_layout(layout, torch.float64)
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(5, sum(col_sizes), generator=gen) * torch.rand(sum(col_sizes), generator=gen) * 3
    native = kernels.bqq_linear(x, layout, backend="numba-table")
    generic = kernels.bqq_linear(x, layout, backend="numba-table-generic")
    assert torch.equal(native, generic)
    error = (native.double() - x.double() @ w.T).abs()
    assert bool((error <= plane_error_bound(x, layout)).all())
    assert rel_err(native, x.double() @ w.T) < 1e-4


BQQ_CASES = [(70, 45, (32, 20), 3), (96, 96, (96, 96), 2), (40, 130, (40, 64), 1), (9, 7, (9, 7), 4),
             (200, 300, (128, 128), 2)]


@pytest.mark.parametrize("case", BQQ_CASES, ids=lambda c: f"{c[0]}x{c[1]}g{c[2][0]}p{c[3]}")
@pytest.mark.parametrize("backend", TABLE_BACKENDS)
def test_bqq_tables_match_the_reference(case, backend):
    m, n, group, stacks = case
    layout = random_weight(m, n, group, stacks).kernel_layout()
    for shape in [(1, n), (3, n), (2, 5, n)]:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape)))
        out = kernels.bqq_linear(x, layout, backend=backend)
        assert out.shape == (*shape[:-1], m)
        assert rel_err(out, kernels.bqq_linear(x, layout, backend="reference")) < BQQ_TABLE_TOLERANCE


def test_generic_shuffle_gives_the_native_bits_for_bqq():
    layout = random_weight(150, 90, (64, 48), 2).kernel_layout()
    x = torch.randn(4, 90)
    assert torch.equal(kernels.bqq_linear(x, layout, backend="numba-table"),
                       kernels.bqq_linear(x, layout, backend="numba-table-generic"))
    assert host_shuffle() in SHUFFLE_KINDS


@pytest.mark.parametrize("family", ["bqq", "planes"])
def test_tables_do_not_depend_on_threads_or_batch(family):
    layout = (random_weight(300, 200, (96, 96), 2).kernel_layout() if family == "bqq"
              else random_planes(300, 200, 2, [128, 72]))
    x = torch.randn(6, 200, generator=torch.Generator().manual_seed(3))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = kernels.bqq_linear(x, layout, backend="numba-table")
        numba.set_num_threads(max(2, before))
        many = kernels.bqq_linear(x, layout, backend="numba-table")
        big = table_matmul.PARALLEL_BYTES
        table_matmul.PARALLEL_BYTES = 0  # force the parallel build on this small layer
        forced = kernels.bqq_linear(x, layout, backend="numba-table")
    finally:
        table_matmul.PARALLEL_BYTES = big
        numba.set_num_threads(before)
    assert torch.equal(one, many) and torch.equal(one, forced)
    for t in range(len(x)):  # each token alone, as at decode
        assert torch.equal(kernels.bqq_linear(x[t:t + 1], layout, backend="numba-table")[0], one[t])


@pytest.mark.parametrize("family", ["bqq", "planes"])
def test_nan_and_inf_inputs_reach_the_output(family):
    layout = (random_weight(70, 45, (32, 20), 2).kernel_layout() if family == "bqq"
              else random_planes(70, 45, 2, [45]))
    for bad in (float("nan"), float("inf")):
        x = torch.randn(2, 45)
        x[0, 3] = bad
        out = kernels.bqq_linear(x, layout, backend="numba-table")
        assert not bool(torch.isfinite(out[0]).any()) and bool(torch.isfinite(out[1]).all())


def test_tables_hold_16_bit_entries():
    # The kernels' integer sums are exact: a block of 128 code bytes sums 256 entries below 2^16.
    assert TABLE_BIAS == 1 << 15 and table_matmul.TABLE_PEAK < TABLE_BIAS - 1
    src = np.array([1.0, -2.0, 3.0, -4.0, 0.5, 0.25, -0.125, 8.0, 9.0], np.float32)
    out = np.zeros(2 * 64, np.uint8)
    scale = table_matmul.table_scale(table_matmul.chunk_peak(src, 0, len(src)))
    table_matmul.fill_tables(src, 0, len(src), 2, scale, out, 0, np.empty(8, np.float32))
    entries = out.reshape(2, 2, 2, 16).astype(np.int64)  # (byte, nibble, low/high, entry)
    values = (entries[:, :, 0] + 256 * entries[:, :, 1] - TABLE_BIAS) * float(scale)
    chunks = np.concatenate([src, np.zeros(16 - len(src), np.float32)]).reshape(4, 4)
    expect = np.array([[sum(c[k] for k in range(4) if e >> k & 1) for e in range(16)] for c in chunks])
    np.testing.assert_allclose(values.reshape(4, 16), expect, atol=float(scale) / 2 + 1e-6)


def test_every_x86_shuffle_this_cpu_has_matches_the_generic_one():
    """table_dot emitted for each byte shuffle this CPU can run (SSSE3, AVX2, AVX-512) sums exactly what the
    element-by-element emulation sums."""
    import numba as nb

    from bqq_kernels.cpu.simd import table_dot

    @nb.njit
    def run(codes, tables, weights, out, kind):
        if kind == 1:
            table_dot(codes, 0, 37, tables, 0, np.float32(0.5), weights, 0, out, 0, (0,))
        elif kind == 2:
            table_dot(codes, 0, 37, tables, 0, np.float32(0.5), weights, 0, out, 0, (0, 0))
        elif kind == 3:
            table_dot(codes, 0, 37, tables, 0, np.float32(0.5), weights, 0, out, 0, (0, 0, 0))
        else:
            table_dot(codes, 0, 37, tables, 0, np.float32(0.5), weights, 0, out, 0, (0, 0, 0, 0))

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, 37 * 64, dtype=np.uint8)
    tables = rng.integers(0, 256, 37 * 64, dtype=np.uint8)
    weights = rng.standard_normal(64).astype(np.float32)
    results = {}
    for kind in range(1, SHUFFLE_KINDS[host_shuffle()] + 1):
        out = np.zeros(64, np.float32)
        run(codes, tables, weights, out, kind)
        results[kind] = out
    entries = tables.reshape(37, 4, 16).astype(np.int64)
    c = codes.reshape(37, 64).astype(np.int64)
    rows = np.arange(37)[:, None]
    sums = (entries[rows, 0, c & 15] + 256 * entries[rows, 1, c & 15] + entries[rows, 2, c >> 4]
            + 256 * entries[rows, 3, c >> 4]).sum(0) - 2 * 37 * TABLE_BIAS
    expect = (weights * (np.float32(0.5) * sums.astype(np.float32))).astype(np.float32)
    for kind, out in results.items():
        np.testing.assert_array_equal(out, results[1], err_msg=f"kind {kind}")
    np.testing.assert_allclose(results[1], expect, rtol=1e-6)


def test_tiny_and_zero_inputs_stay_finite():
    layout = random_planes(70, 45, 2, [45])
    for scale in (0.0, 1e-39, 1e-20):
        x = torch.full((1, 45), scale)
        out = kernels.bqq_linear(x, layout, backend="numba-table")
        assert bool(torch.isfinite(out).all())
        ref = kernels.bqq_linear(x.double(), layout)
        assert float((out.double() - ref).abs().max()) <= 1e-24 + 1e-3 * float(ref.abs().max())
