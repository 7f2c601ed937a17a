"""bqq.gnn.train: a deep GCN trained dense and as a folded SLT ticket; bad settings."""

from __future__ import annotations

import pytest
import torch

import bqq
from bqq import gnn, slt


def small_sbm(seed: int = 0) -> gnn.Graph:
    return gnn.sbm_graph(num_nodes=700, num_classes=4, num_edges=1400, num_features=120, topic_words=15,
                         signal=0.08, seed=seed, split=(20, 150, None))


def test_deep_gcn_trains_dense_and_as_folded_ticket(tmp_path):
    g = small_sbm()
    deep = gnn.GNN(g.x.shape[1], 32, g.num_classes, layers=8, dropout=0.2)
    dense = gnn.train_node_classifier(deep, g, epochs=60, weight_decay=5e-4, progress=False)
    assert dense["test"] > 60.0, dense
    folded = gnn.FoldedGNN(g.x.shape[1], 64, g.num_classes, stages=(4, 4), unshared_masks=True)
    slt.convert(folded, method="msup", sparsity=0.5, coats=3, scope="global", seed=0)
    result = gnn.train_node_classifier(folded, g, epochs=80, progress=False)
    assert result["test"] > 60.0 and result["best_epoch"] >= 40, result  # chance is 25 %
    layers = [layer for _, layer in slt.masked_layers(folded)]
    total = sum(layer.numel for layer in layers)
    assert sum(int((layer.levels > 0).sum()) for layer in layers) == slt.kept_count(total, 0.5)  # ramp done
    path = tmp_path / "folded.safetensors"
    slt.export(folded, path)
    fresh = slt.load(path, gnn.FoldedGNN(g.x.shape[1], 64, g.num_classes, stages=(4, 4), unshared_masks=True))
    folded.eval()
    fresh.eval()
    assert torch.equal(folded(g.x, g), fresh(g.x, g))
    assert gnn.accuracy(fresh, g)["test"] == pytest.approx(gnn.accuracy(folded, g)["test"])
    assert gnn.accuracy(folded, g)["test"] == pytest.approx(result["test"])  # the best-validation state was kept
    unfolded = sum(p.numel() for p in gnn.GNN(g.x.shape[1], 64, g.num_classes, layers=10).parameters())
    report = slt.memory_report(fresh, dense_params=unfolded)
    assert report["dense_bits"] == 32 * unfolded
    assert report["reduction"] == pytest.approx(1 - report["ticket_bits"] / report["dense_bits"])
    assert report["reduction"] > 0.9  # ~1.8 mask bits per weight (3 coats) against 32
    with pytest.raises(bqq.FormatError, match=r"bqq\.slt\.load"):
        bqq.load(path)


def test_training_rejects_bad_settings():
    g = gnn.karate_club()
    with pytest.raises(ValueError, match="ramp"):
        gnn.train_node_classifier(gnn.GNN(34, 8, 2), g, ramp=1.0)
    with pytest.raises(ValueError, match="norm"):
        gnn.GNN(34, 8, 2, norm="layer")
    with pytest.raises(ValueError, match="conv must be"):
        gnn.GNN(34, 8, 2, conv="gat")
