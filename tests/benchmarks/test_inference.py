"""benchmarks/inference.py runs end to end on tiny shapes (timings are not checked: they belong to the benchmark)."""

import torch

import bqq_kernels as kernels
from benchmarks import inference as bench


def test_layer_and_sweep_rows_and_report():
    layers = bench.layer_rows([(256, 256)], [1, 3], repeats=2)
    assert [r["tokens"] for r in layers] == [1, 3]
    assert all(r["int4_s"] > 0 and r["uq2_ratio"] == r["uq2_s"] / r["dense_s"] for r in layers)
    sweep = bench.sweep_rows([(256, 256)], [1, 64], repeats=2)
    assert {r["uq_fastest"] for r in sweep} <= {"table", "exact", "rebuild"}
    switches = bench.suggested_switches(sweep)
    assert set(switches) == {"bqq_table_below", "uq_table_below"}
    data = {"command": "c", "date": "d", "env": bench.environment(), "layers": layers, "sweep": sweep,
            "switches": switches, "switches_in_use": {}}
    text = bench.markdown(data)
    assert "| 256x256 | 1 |" in text and "## Targets" in text


def test_int4_peer_and_random_bqq_rows_compute():
    layer = bench.Int4Linear(64, 256)
    assert layer(torch.randn(3, 256, dtype=torch.bfloat16)).shape == (3, 64)
    matrix = bench.random_bqq_matrix((96, 80), 32)
    x = torch.randn(2, 80)
    ref = x @ matrix.dequantize(torch.float32).T
    out = kernels.bqq_linear(x, matrix.kernel_layout(), backend="numba-exact")
    assert float((out - ref).norm() / ref.norm()) < 1e-5


def test_generate_row_on_a_tiny_decoder():
    for row in ("bqq-2*", "uq-2", "torch-int4"):
        result = bench.generate_row("quick", row, new_tokens=3, prompt=8, prefill=16)
        assert result["tokens_per_s"] > 0 and result["peak_rss_mb"] > 0 and result["row"] == row
    model = bench.build_llm("quick", "bqq-2*")
    assert sum(isinstance(m, kernels_layer()) for m in model.modules()) == 2 * 7


def kernels_layer():
    from bqq.ptq import QuantizedLinear

    return QuantizedLinear
