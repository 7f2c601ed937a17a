"""benchmarks/kernels.py runs end to end on tiny shapes (timings are not checked: they belong to the benchmark)."""

import pytest
import torch

import bqq_kernels as kernels
from benchmarks import kernels as bench


def test_kernel_benchmark_rows_and_table(tmp_path):
    layout = bench.random_layout((40, 72), group=32)
    assert layout.rank.shape == (2, 3) and layout.stacks == 2
    x = torch.randn(9, 72)
    ref = x @ kernels.dequantize_layout(layout).T
    assert float((kernels.bqq_linear(x, layout, backend="numba-exact") - ref).norm() / ref.norm()) < 1e-5
    rows = bench.layer_rows([(40, 72)], [1, 9], repeats=2)
    assert [r["tokens"] for r in rows] == [1, 9]
    assert all(r["bqq_s"] > 0 and r["dense_s"] > 0 and r["ratio"] == r["bqq_s"] / r["dense_s"] for r in rows)
    text = bench.markdown(rows, [], {"threads": 2})
    assert "| 40x72 | 1 |" in text and "<= 1" in text


def test_cuda_mode_rows_and_table_run_on_the_interpreter():
    """The --device cuda functions on CPU tensors (Triton interpreted; a stand-in timer: one call each, 10 µs)."""
    pytest.importorskip("triton")
    from bqq_kernels.gpu import PATHS, interpreted

    if not interpreted():
        pytest.skip("compiled Triton takes CUDA tensors only")
    timer = lambda fn: (fn(), 1e-5)[1]  # noqa: E731
    layers = bench.cuda_layer_rows([((40, 72), 32, (1, 20))], "cpu", timer)
    assert [(r["tokens"], r["path"]) for r in layers] == [(1, "decode"), (20, "rebuild")]
    assert all(r["ratio_fp16"] == 1.0 and r["official_s"] is None for r in layers)
    sweep = bench.path_sweep_rows([((40, 72), 32, ())], (1, 17), "cpu", timer)
    assert all(r["fastest"] in PATHS and all(r[f"{p}_s"] == 1e-5 for p in PATHS) for r in sweep)
    steps = bench.decode_step_rows([((40, 72), 32, ())], "cpu", timer, steps=(1, 1 << 20))
    from bqq_kernels.gpu import bqq_matmul

    assert steps[0]["fastest_steps"] == 1 and steps[0]["current"] == bqq_matmul.Y_STEPS_PER_PROGRAM
    text = bench.cuda_markdown(layers, sweep, [], {"gpu": "none"}, bench.suggest_switch_points(sweep), steps)
    assert "| 40x72 (32) | 1 | decode |" in text and "Switch points that lose least" in text
    assert "| 40x72 | 10.0 | 10.0 | 1 |" in text and "no split" in text


def test_cuda_targets_and_switch_point_suggestion():
    pytest.importorskip("triton", reason="the suggestion reads the Triton kernel's launch constants ([gpu] extra)")
    row = {"shape": "4096x4096", "tokens": 1, "ratio_fp16": 0.8, "bqq_fp16_s": 20e-6, "official_s": 23.6e-6}
    assert bench.layer_targets(row) == [("<= 1.0x fp16", True), ("stretch <= 0.5x fp16", False),
                                        ("faster than official", True)]
    row = {"shape": "384x1536", "tokens": 197, "ratio_fp16": 1.6, "bqq_fp16_s": 9e-6, "official_s": None}
    assert bench.layer_targets(row) == [("<= 1.5x fp16", False)]
    assert bench.layer_targets({**row, "tokens": 1}) == [("<= 10 us", True)]
    # decode fastest up to 4 tokens, factored at 16 (a quarter of the largest rank, 64), rebuild beyond
    fastest = {1: "decode", 4: "decode", 16: "factored", 64: "rebuild"}
    sweep = [{"tokens": t, "l_max": 64, "fastest": f, **{f"{p}_s": 1.0 if p == f else 2.0 for p in fastest.values()}}
             for t, f in fastest.items()]
    suggestion = bench.suggest_switch_points(sweep)
    assert (suggestion["decode_max_tokens"], suggestion["factored_max_tokens_per_rank"]) == (4, 0.25)
    assert suggestion["mean_slowdown"] == 1.0 and suggestion["current_mean_slowdown"] > 1.0
