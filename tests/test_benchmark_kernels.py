"""benchmarks/kernels.py runs end to end on tiny shapes (timings are not checked: they belong to the benchmark)."""

import torch

import bqq_kernels as kernels
from benchmarks import kernels as bench


def test_kernel_benchmark_rows_and_table(tmp_path):
    layout = bench.random_layout((40, 72), group=32)
    assert layout.rank.shape == (2, 3) and layout.stacks == 2
    x = torch.randn(9, 72)
    ref = x @ kernels.dequantize_layout(layout).T
    assert float((kernels.bqq_linear(x, layout) - ref).norm() / ref.norm()) < 1e-5
    rows = bench.layer_rows([(40, 72)], [1, 9], repeats=2)
    assert [r["tokens"] for r in rows] == [1, 9]
    assert all(r["bqq_s"] > 0 and r["dense_s"] > 0 and r["ratio"] == r["bqq_s"] / r["dense_s"] for r in rows)
    text = bench.markdown(rows, [], {"threads": 2})
    assert "| 40x72 | 1 |" in text and "<= 1" in text
