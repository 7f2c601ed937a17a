"""bqq.gnn: propagation matrices, offline graphs, file loaders, GCN/GIN, folding, SLT training and export."""

from __future__ import annotations

import gzip
import pickle
from collections import defaultdict

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import bqq
from bqq import gnn, slt
from bqq.datasets import FASHION_MNIST_DIR


def small_sbm(seed: int = 0) -> gnn.Graph:
    return gnn.sbm_graph(num_nodes=700, num_classes=4, num_edges=1400, num_features=120, topic_words=15,
                         signal=0.08, seed=seed, split=(20, 150, None))


# ---- graphs ------------------------------------------------------------------------------------------

def test_propagation_matrices_match_their_formulas():
    edges = torch.tensor([[0, 1, 1, 2, 0, 3], [1, 0, 2, 1, 0, 3]])  # a path 0-1-2, self loops, node 3 alone
    a = torch.zeros(4, 4)
    a[0, 1] = a[1, 0] = a[1, 2] = a[2, 1] = 1.0
    gcn = gnn.propagation_matrix(edges, 4, "gcn").to_dense()
    a_hat = a + torch.eye(4)
    d = a_hat.sum(1).rsqrt()
    torch.testing.assert_close(gcn, d[:, None] * a_hat * d[None, :])
    mean = gnn.propagation_matrix(edges, 4, "mean").to_dense()
    torch.testing.assert_close(mean.sum(1), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    torch.testing.assert_close(gnn.propagation_matrix(edges, 4, "sum").to_dense(), a)
    dup = torch.cat([edges, edges], dim=1)  # duplicate edges count once
    torch.testing.assert_close(gnn.propagation_matrix(dup, 4, "gcn").to_dense(), gcn)
    with pytest.raises(ValueError, match="aggregation"):
        gnn.propagation_matrix(edges, 4, "max")


def test_graph_validation_names_the_problem():
    g = gnn.karate_club()
    ok = dict(x=g.x, y=g.y, edge_index=g.edge_index, train=g.train, val=g.val, test=g.test)
    bad_x = g.x.clone()
    bad_x[0, 0] = float("nan")
    for change, match in [({"x": bad_x}, "NaN"), ({"edge_index": g.edge_index + 40}, "outside"),
                          ({"y": g.y.int()}, "int64"), ({"val": torch.zeros(34, dtype=torch.bool)}, "empty"),
                          ({"edge_index": g.edge_index[0]}, r"\(2, E\)")]:
        with pytest.raises(ValueError, match=match):
            gnn.Graph(**{**ok, **change})


def test_offline_graphs():
    karate = gnn.karate_club()
    assert karate.num_nodes == 34 and karate.num_edges == 78 and karate.num_classes == 2
    g = gnn.sbm_graph()
    assert g.num_nodes == 2708 and g.num_classes == 7 and abs(g.num_edges - 5278) < 250
    assert (g.train.sum(), g.val.sum(), g.test.sum()) == (140, 500, 1000)
    assert not (g.train & g.val).any() and not (g.val & g.test).any()
    src, dst = g.edge_index
    assert 0.75 < float((g.y[src] == g.y[dst]).float().mean()) < 0.85  # homophily
    again = gnn.sbm_graph()
    assert torch.equal(g.edge_index, again.edge_index) and torch.equal(g.x, again.x)


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist); CI installs it")
def test_fashion_knn_graph():
    g = gnn.fashion_knn_graph(num_nodes=600, k=5, val=100)
    assert g.x.shape == (600, 784) and g.num_classes == 10
    src, dst = g.edge_index
    assert float((g.y[src] == g.y[dst]).float().mean()) > 0.6  # pixel neighbours mostly share a class
    assert g.edge_index.shape[1] >= 600 * 5


# ---- file loaders ------------------------------------------------------------------------------------

def write_planetoid(root, name="cora", n_train=6, n_test=5, n_features=7, n_classes=3):
    rng = np.random.default_rng(0)
    n_all = 14
    test_index = np.array([18, 15, 17, 14, 16])  # stored unsorted, as the real files are
    onehot = np.eye(n_classes)
    allx = sp.csr_matrix(rng.random((n_all, n_features)) < 0.4, dtype=np.float32)
    tx = sp.csr_matrix(rng.random((n_test, n_features)) < 0.4, dtype=np.float32)
    ally = onehot[rng.integers(0, n_classes, n_all)]
    ty = onehot[[0, 1, 2, 0, 1]]
    graph = defaultdict(list, {0: [1, 2], 1: [0], 2: [0, 14], 14: [2], 18: [17]})
    parts = {"x": allx[:n_train], "y": ally[:n_train], "tx": tx, "ty": ty, "allx": allx, "ally": ally,
             "graph": graph}
    for part, obj in parts.items():
        (root / f"ind.{name}.{part}").write_bytes(pickle.dumps(obj, protocol=2))
    (root / f"ind.{name}.test.index").write_text("\n".join(map(str, test_index)) + "\n")
    return allx, tx, ally, ty, test_index


def test_load_planetoid_reorders_test_nodes_and_splits(tmp_path):
    _, tx, _, ty, test_index = write_planetoid(tmp_path)
    g = gnn.load_planetoid("Cora", tmp_path)
    assert g.num_nodes == 19 and g.x.shape == (19, 7)
    sorted_index = np.sort(test_index)
    for row, node in enumerate(test_index):  # row i of tx belongs to the i-th test id in file order (Kipf's loader)
        np.testing.assert_array_equal(g.x[node].numpy(), tx.toarray()[row])
        assert g.y[node] == ty[row].argmax()
    assert g.train[:6].all() and not g.train[6:].any() and g.test[sorted_index].all()
    assert g.num_edges == 4


def test_load_planetoid_fails_fast_and_refuses_code(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        gnn.load_planetoid("cora", tmp_path)
    with pytest.raises(ValueError, match="one of"):
        gnn.load_planetoid("reddit", tmp_path)
    write_planetoid(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "ind.cora.graph").write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(ValueError, match=r"refusing to load (__builtin__|builtins)\.print"):
        gnn.load_planetoid("cora", tmp_path)


def test_load_ogbn_arxiv_from_ogb_files(tmp_path):
    raw, split = tmp_path / "ogbn_arxiv" / "raw", tmp_path / "ogbn_arxiv" / "split" / "time"
    raw.mkdir(parents=True)
    split.mkdir(parents=True)

    def write(path, rows):
        with gzip.open(path, "wt") as f:
            f.write("\n".join(",".join(map(str, r)) for r in rows) + "\n")

    write(raw / "edge.csv.gz", [(0, 1), (1, 2), (3, 2), (4, 0)])
    write(raw / "node-feat.csv.gz", [(i * 0.5, -i) for i in range(5)])
    write(raw / "node-label.csv.gz", [(i % 3,) for i in range(5)])
    write(split / "train.csv.gz", [(0,), (1,)])
    write(split / "valid.csv.gz", [(2,)])
    write(split / "test.csv.gz", [(3,), (4,)])
    g = gnn.load_ogbn_arxiv(tmp_path)
    assert g.x.shape == (5, 2) and g.num_edges == 4 and g.y.tolist() == [0, 1, 2, 0, 1]
    assert g.train.tolist() == [True, True, False, False, False] and g.test.sum() == 2
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        gnn.load_ogbn_arxiv(tmp_path / "missing")


# ---- models ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("conv", ["gcn", "gin"])
def test_gnn_forward_and_slt_gradients(conv):
    g = gnn.karate_club()
    model = slt.convert(gnn.GNN(34, 16, 2, layers=3, conv=conv), method="msup", scope="global", seed=1)
    out = model(g.x, g)
    assert out.shape == (34, 2)
    out.sum().backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith("scores") for n in trainable)
    assert all(p.grad is not None for n, p in model.named_parameters())


def test_folding_shares_weights_exactly():
    dense = gnn.FoldedGNN(34, 16, 2, stages=(3, 2), unshared_masks=True)
    stage = dense.stages[0]
    assert all(c.lin.weight is stage.convs[0].lin.weight for c in stage.convs)
    n_params = sum(p.numel() for p in dense.parameters())
    assert n_params == 34 * 16 + 16 * 16 * 2 + 16 * 2  # one weight per stage
    assert dense.depth == 7
    shared = slt.convert(gnn.FoldedGNN(34, 16, 2, stages=(3, 2)), method="msup", seed=0)
    unshared = slt.convert(dense, method="msup", seed=0)
    assert len(slt.masked_layers(shared)) == 4 and len(slt.masked_layers(unshared)) == 7
    convs = [c.lin for c in unshared.stages[0].convs]
    assert all(torch.equal(c.signs, convs[0].signs) for c in convs)
    assert not torch.equal(convs[0].scores, convs[1].scores)
    assert torch.equal(shared.stages[0].convs[0].lin.signs, convs[0].signs)  # same key: same random weight
    report = slt.memory_report(unshared)
    assert report["dense_bits"] == 32 * n_params  # the shared weight counts once in the dense model
    assert report["mask_bits"] > slt.memory_report(shared)["mask_bits"]  # but each iteration has a mask


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
