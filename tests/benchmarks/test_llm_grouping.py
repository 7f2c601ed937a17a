"""benchmarks/llm_grouping.py end to end on a small source with calibration statistics (timings unchecked)."""

import json

import numpy as np
import pytest

import bqq
from benchmarks import llm_grouping as bench


def toy_source():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 24)) * rng.permutation(np.geomspace(0.05, 5.0, 24))  # unequal inputs: H matters
    h = x.T @ x / len(x)
    return [("a", rng.standard_normal((16, 24)), h), ("b", rng.standard_normal((8, 24)), h)], "toy"


def test_grouping_table_scores_every_cell_once(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.SOURCES, "toy", toy_source)
    doc = bench.main(["--sources", "toy", "--groups", "8", "64", "128", "8xin", "--budgets", "1", "2",
                      "--aware-budgets", "1", "--out", str(tmp_path)])
    rows = doc["rows"]
    # 64 and 128 both clip to whole layers, and budgets 1 and 2 both give the floor of 200 sweeps: one cell
    assert [(r["group"], r["objective"], r["budget"]) for r in rows] == [
        ("8", "plain", 1.0), ("8", "output-aware", 1.0), ("64", "plain", 1.0), ("64", "output-aware", 1.0),
        ("8xin", "plain", 1.0), ("8xin", "output-aware", 1.0)]
    assert rows[0]["groups"] == ["8x8"] and rows[2]["groups"] == ["16x24", "8x24"]
    assert rows[0]["sweeps"] == [200] and rows[1]["sweeps"] == [50]
    for plain, aware in zip(rows[::2], rows[1::2], strict=True):  # each objective wins its own measure
        assert plain["rel_error"] < aware["rel_error"]
    # the output error of a cell, recomputed: sqrt(Σ tr(E H Eᵀ) / Σ tr(W H Wᵀ)) over the layers
    layers, _ = toy_source()
    he = hw = 0.0
    for _, w, h in layers:
        q = bqq.compress(w, bits=2, group_size=(8, 24), seed=0, progress=False, hessian=h, weighted_sweep_budget=1.0)
        e = w - q.dequantize().double().numpy()
        he, hw = he + np.trace(e @ h @ e.T), hw + np.trace(w @ h @ w.T)
    assert rows[5]["output_error"] == pytest.approx((he / hw) ** 0.5, rel=1e-5)
    for r in rows:
        assert r["bits_fp16"] < r["bits_fp32"] and r["rel_error_fp16"] == pytest.approx(r["rel_error"], rel=1e-2)
        assert r["us_per_weight"] > 0
    saved = json.loads((tmp_path / "llm_grouping.json").read_text())
    assert len(saved["rows"]) == len(rows) and "| toy | 8xin (8x24) |" in (tmp_path / "llm_grouping.md").read_text()
