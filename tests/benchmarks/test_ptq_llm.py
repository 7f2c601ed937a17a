"""benchmarks/ptq_llm.py end to end on the committed tiny Llama."""

from __future__ import annotations

import json

import pytest

from tests.helpers import TINY_LLAMA, transformers_module


def test_llm_benchmark_measures_rows_and_keeps_earlier_ones(tmp_path):
    """benchmarks/ptq_llm.py end to end on the committed tiny Llama (short windows, few samples): rows merge
    across runs, the noise row perturbs only the block weights, bits/weight counts the group scalars."""
    transformers_module()
    from benchmarks import ptq_llm

    text = tmp_path / "test_slice.txt"  # a slice of the held-out text keeps the perplexity passes short
    text.write_text((TINY_LLAMA / "test.txt").read_text()[:8000])
    small = ["--seqlen", "64", "--nsamples", "2", "--text", str(text), "--out", str(tmp_path)]
    ptq_llm.main(["--bits", "4", "--rows", "fp", "noise", "rtn", *small])
    ptq_llm.main(["--bits", "4", "--rows", "gptq", *small])
    result = json.loads((tmp_path / "ptq_llm.json").read_text())
    by = {(r["row"], r["bits"]): r for r in result["rows"]}
    assert set(by) == {("fp", None), ("noise", None), ("rtn", 4), ("gptq", 4)}
    fp = by["fp", None]["perplexity"]
    assert by["noise", None]["perplexity"] > fp  # 50 % noise on every block weight must cost something
    for row in ("rtn", "gptq"):
        assert by[row, 4]["bits_per_weight"] == pytest.approx(4.5)  # 4-bit codes + two FP32 scalars per 128
        assert by[row, 4]["chosen"] == {"uq" if row == "rtn" else "gptq": 28}
        assert by[row, 4]["ratio"] == pytest.approx(by[row, 4]["perplexity"] / fp)
    assert len(result["commands"]) == 2
    assert "| 4 | GPTQ | yes | 1x128 |" in (tmp_path / "ptq_llm.md").read_text()

    ptq_llm.main(["--bits", "4", "--rows", "fp", "--seed", "1", *small])  # other settings: a new table
    assert [r["row"] for r in json.loads((tmp_path / "ptq_llm.json").read_text())["rows"]] == ["fp"]
    (moved,) = tmp_path.glob("ptq_llm.*.json")  # ... and the earlier one is kept beside it, not overwritten
    assert json.loads(moved.read_text()) == result
    assert moved.with_suffix(".md").exists()
