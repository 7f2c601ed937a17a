"""examples/gnn_slt.py --quick: every row runs, tickets reload exactly, results are written and reused."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "gnn_slt.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gnn_slt_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_gnn_slt_quick(tmp_path, capsys):
    script = load_script()
    assert script.main(["--quick", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "gnn_slt.json").read_text())
    md = (tmp_path / "gnn_slt.md").read_text()
    assert "python examples/gnn_slt.py --quick" in md and "wall time" in md
    runs = doc["runs"]
    assert {(r["graph"], r["variant"]) for r in runs} == {(g, v) for g in ("sbm", "karate") for v in script.VARIANTS}
    chance = {"sbm": 25.0, "karate": 50.0}  # the quick SBM has 4 classes
    for r in runs:
        assert r["test"] > chance[r["graph"]], r
        if r["variant"] in ("mlp", "dense", "dense-deep"):
            assert r["reload_exact"] is None and r["bits_per_weight"] == 32.0
        else:
            assert r["reload_exact"] is True, r
            assert 0.9 < r["reduction"] < 1.0 and r["stored_mb"] < r["dense_mb"]
    sbm = {r["variant"]: r for r in runs if r["graph"] == "sbm"}
    assert sbm["dense"]["test"] > sbm["mlp"]["test"] + 10  # the graph carries most of the signal
    assert sbm["folded"]["dense_params"] == sbm["dense-deep"]["weights"]  # compared with the unfolded GCN-10
    assert len(list((tmp_path / "runs" / "gnn_slt").glob("*.json"))) == len(runs)
    assert len(list((tmp_path / "tickets" / "gnn_slt").glob("*.safetensors"))) == 6  # 3 SLT rows x 2 graphs
    assert "| sbm | GCN-2, dense" in md and md.count("| yes |") == 6
    capsys.readouterr()
    # A second invocation reuses every finished run.
    assert script.main(["--quick", "--out", str(tmp_path), "--graphs", "karate"]) == 0
    assert "6 of 6 runs reused" in capsys.readouterr().out
