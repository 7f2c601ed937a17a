"""bqq.gnn.data: offline graphs and the Planetoid / ogbn-arxiv file loaders."""

from __future__ import annotations

import gzip
import pickle
from collections import defaultdict

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bqq import gnn
from bqq.datasets import FASHION_MNIST_DIR


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
