"""benchmarks/llm_scale.py on a toy Llama: forwards per batch, memory, data-free timing."""

from __future__ import annotations

import math

from tests.helpers import transformers_module


def test_llm_scale_check_counts_forwards_and_memory(tmp_path):
    """benchmarks/llm_scale.py on a toy Llama: the embedding runs at most twice per batch, each solved block
    at most its stages + 2 times (its FP copy likewise), a block after the last solved one only in the opening
    forward."""
    transformers_module()
    from benchmarks import llm_scale

    doc = llm_scale.main(["--shape", "toy", "--blocks", "2", "--nsamples", "2", "--seqlen", "16",
                          "--out", str(tmp_path)])
    runs = doc["runs_per_batch"]
    stages = 4  # q/k/v, o, gate/up, down
    assert runs["embedding"] <= 2
    for name in ("block 0", "block 1", "block 0 FP copy", "block 1 FP copy"):  # corrected: an FP copy each
        assert 1 < runs[name] <= stages + 2, (name, runs)
    assert runs["block 2"] * 2 == 1  # not solved: it ran once in all, in the opening forward (first batch)
    assert doc["blocks_solved"] == 2 and len(doc["per_block_s"]) == 2
    # a toy's own memory is within the RSS noise (CI measured peak == runtime), so only sanity here
    assert doc["peak_rss_bytes"] > doc["model_bytes"] and math.isfinite(doc["memory_ratio"])
    assert "| peak / (model + activations) |" in (tmp_path / "llm_scale_toy_gptq-calibrated.md").read_text()


def test_llm_scale_times_data_free_bqq(tmp_path):
    transformers_module()
    from benchmarks import llm_scale

    doc = llm_scale.main(["--shape", "toy", "--method", "bqq", "--data-free", "--blocks", "1", "--out", str(tmp_path)])
    assert doc["method"] == "bqq" and doc["bits"] == 2 and not doc["calibrated"]
    assert doc["blocks_solved"] == 1 and doc["per_block_s"] == [] and doc["median_block_s"] == doc["quantize_s"]
    assert doc["projected_model_s"] == doc["median_block_s"] * 3 and doc["groups"]
    assert "BQQ 2-bit, data-free" in (tmp_path / "llm_scale_toy_bqq-data-free.md").read_text()
