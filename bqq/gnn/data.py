"""Graph datasets: offline ones built here (karate club, a Cora-scale contextual SBM, a kNN graph over
Fashion-MNIST) and loaders for Planetoid (Cora, CiteSeer, PubMed) and ogbn-arxiv files that users
already have. Nothing is downloaded: a missing file fails fast with what to provide.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..datasets import load_fashion_mnist
from .graph import Graph, undirected

PLANETOID = ("cora", "citeseer", "pubmed")
_PLANETOID_PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph")


def split_masks(y: torch.Tensor, per_class: int, val: int, test: int | None, seed: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Planetoid-style split: ``per_class`` training nodes of each class, then ``val`` and ``test``
    nodes (``None``: all remaining) from a seeded permutation of the rest."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=gen)
    train = torch.zeros(len(y), dtype=torch.bool)
    for c in range(int(y.max()) + 1):
        members = order[y[order] == c][:per_class]
        train[members] = True
    rest = order[~train[order]]
    if len(rest) < val + (test or 1):
        raise ValueError(f"{len(y)} nodes are too few for {per_class}/class training, {val} validation and "
                         f"{test} test nodes")
    val_mask = torch.zeros(len(y), dtype=torch.bool)
    val_mask[rest[:val]] = True
    test_mask = torch.zeros(len(y), dtype=torch.bool)
    test_mask[rest[val:val + test] if test is not None else rest[val:]] = True
    return train, val_mask, test_mask


def karate_club(seed: int = 0) -> Graph:
    """Zachary's karate club (networkx, bundled): 34 nodes, 78 edges, 2 classes (the club each member
    joined), one-hot node features; 4 training nodes per class, 6 validation, the rest test."""
    import networkx as nx

    g = nx.karate_club_graph()
    edges = torch.tensor(list(g.edges()), dtype=torch.int64).t()
    y = torch.tensor([0 if g.nodes[i]["club"] == "Mr. Hi" else 1 for i in g.nodes()], dtype=torch.int64)
    train, val, test = split_masks(y, 4, 6, None, seed)
    return Graph(torch.eye(34), y, undirected(edges), train, val, test, name="karate")


def sbm_graph(num_nodes: int = 2708, num_classes: int = 7, num_edges: int = 5278, homophily: float = 0.8,
              num_features: int = 500, topic_words: int = 40, signal: float = 0.06, seed: int = 0,
              split: tuple[int, int, int | None] = (20, 500, 1000)) -> Graph:
    """A contextual stochastic block model at Cora scale (defaults: 2708 nodes, 7 classes, ~5278 edges,
    80 % of edges inside a class, 500 sparse binary "bag of words" features).

    Each class has ``topic_words`` words whose probability is raised by ``signal`` over a base of
    0.01, so features alone are weakly informative and the graph carries the rest (like Cora, where a
    GCN is far more accurate than an MLP on the features alone). ``split`` = (training nodes per class,
    validation nodes, test nodes or None for the rest); the default is Planetoid's 20 / 500 / 1000.
    """
    rng = np.random.default_rng(seed)
    y = np.sort(rng.integers(0, num_classes, num_nodes))
    sizes = np.bincount(y, minlength=num_classes)
    intra_pairs = float(sum(s * (s - 1) // 2 for s in sizes))
    inter_pairs = num_nodes * (num_nodes - 1) / 2 - intra_pairs
    p_in, p_out = homophily * num_edges / intra_pairs, (1 - homophily) * num_edges / inter_pairs
    rows, cols = np.triu_indices(num_nodes, k=1)
    prob = np.where(y[rows] == y[cols], p_in, p_out)
    keep = rng.random(rows.size) < prob
    edges = torch.from_numpy(np.stack([rows[keep], cols[keep]]).astype(np.int64))
    word_prob = np.full((num_classes, num_features), 0.01)
    for c in range(num_classes):
        word_prob[c, rng.choice(num_features, topic_words, replace=False)] += signal
    x = (rng.random((num_nodes, num_features)) < word_prob[y]).astype(np.float32)
    x /= np.maximum(x.sum(1, keepdims=True), 1.0)  # row-normalized, as Planetoid features usually are
    perm = rng.permutation(num_nodes)  # do not leave the classes in blocks of node ids
    inverse = np.argsort(perm)
    x, y = x[perm], y[perm]
    edges = torch.from_numpy(inverse)[edges]
    y_t = torch.from_numpy(y.astype(np.int64))
    train, val, test = split_masks(y_t, *split, seed)
    return Graph(torch.from_numpy(x), y_t, undirected(edges), train, val, test, name="sbm")


def fashion_knn_graph(num_nodes: int = 3000, k: int = 10, per_class: int = 20, val: int = 500, seed: int = 0,
                      root: str | os.PathLike | None = None) -> Graph:
    """A kNN graph over the first ``num_nodes`` Fashion-MNIST training images (cosine similarity of
    pixels, symmetrized), pixels as features; ``per_class`` training nodes per class, ``val``
    validation, the rest test. Needs the Debian package ``dataset-fashion-mnist`` (or ``root``)."""
    images, labels = load_fashion_mnist("train", **({"root": root} if root is not None else {}))
    x = images[:num_nodes].reshape(num_nodes, -1)
    y = labels[:num_nodes]
    unit = torch.nn.functional.normalize(x - x.mean(0), dim=1)
    neighbours = []
    for start in range(0, num_nodes, 1024):  # chunks keep memory at 1024 x N
        sim = unit[start:start + 1024] @ unit.t()
        sim[torch.arange(sim.shape[0]), torch.arange(start, start + sim.shape[0])] = -2.0  # no self loops
        neighbours.append(sim.topk(k, dim=1).indices)
    dst = torch.cat(neighbours)
    src = torch.arange(num_nodes).repeat_interleave(k)
    edges = undirected(torch.stack([src, dst.reshape(-1)]))
    train, val_mask, test = split_masks(y, per_class, val, None, seed)
    return Graph(x, y, edges, train, val_mask, test, name="fashion-knn")


def load_planetoid(name: str, root: str | os.PathLike) -> Graph:
    """Cora, CiteSeer or PubMed from the original Planetoid files ``ind.<name>.{x,y,tx,ty,allx,ally,
    graph,test.index}`` in ``root`` (e.g. a ``raw/`` folder of torch_geometric's cache), with the
    standard split (the first 20 per class for training, the next 500 for validation, the 1000 test
    nodes). The pickles are read with an unpickler that only admits numpy and scipy.sparse arrays and
    plain containers, so a tampered file cannot run code.
    """
    name = name.lower()
    if name not in PLANETOID:
        raise ValueError(f"Planetoid dataset must be one of {PLANETOID}, got {name!r}")
    root = Path(root)
    paths = {part: root / f"ind.{name}.{part}" for part in (*_PLANETOID_PARTS, "test.index")}
    missing = [p.name for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"Planetoid {name}: {', '.join(missing)} not found in {root}; nothing is "
                                "downloaded here, so copy the raw ind.* files (e.g. from torch_geometric's "
                                "raw folder) there")
    parts = {part: _safe_unpickle(paths[part]) for part in _PLANETOID_PARTS}
    test_index = np.loadtxt(paths["test.index"], dtype=np.int64).reshape(-1)
    tx, allx = _dense(parts["tx"]), _dense(parts["allx"])
    y, ty, ally = (np.asarray(parts[k]) for k in ("y", "ty", "ally"))  # y: the labelled training nodes
    test_range = np.sort(test_index)
    if name == "citeseer":  # isolated test nodes are missing from tx/ty: pad with zero rows
        span = test_range.max() - test_range.min() + 1
        tx_full, ty_full = np.zeros((span, tx.shape[1]), np.float32), np.zeros((span, ty.shape[1]), ty.dtype)
        tx_full[test_range - test_range.min()], ty_full[test_range - test_range.min()] = tx, ty
        tx, ty = tx_full, ty_full
    features = np.vstack([allx, tx]).astype(np.float32)
    labels = np.vstack([ally, ty])
    # The test rows are stored in sorted order; put them at their node ids.
    features[test_index], labels[test_index] = features[test_range], labels[test_range]
    n = features.shape[0]
    graph_dict = parts["graph"]
    edges = [(int(u), int(v)) for u, vs in graph_dict.items() for v in vs if int(v) < n and int(u) < n]
    edge_index = undirected(torch.tensor(edges, dtype=torch.int64).t())
    y_t = torch.from_numpy(labels.argmax(1).astype(np.int64))
    train = torch.zeros(n, dtype=torch.bool)
    train[: len(y)] = True
    val = torch.zeros(n, dtype=torch.bool)
    val[len(y): len(y) + 500] = True
    test = torch.zeros(n, dtype=torch.bool)
    test[torch.from_numpy(test_range)] = True
    return Graph(torch.from_numpy(features), y_t, edge_index, train, val, test, name=name)


def load_ogbn_arxiv(root: str | os.PathLike) -> Graph:
    """ogbn-arxiv from OGB's files under ``root`` (``ogbn_arxiv/raw/{edge,node-feat,node-label}.csv.gz``
    and ``ogbn_arxiv/split/time/{train,valid,test}.csv.gz``), edges made undirected as is usual."""
    base = Path(root) / "ogbn_arxiv"
    files = {"edge": base / "raw" / "edge.csv.gz", "feat": base / "raw" / "node-feat.csv.gz",
             "label": base / "raw" / "node-label.csv.gz",
             **{s: base / "split" / "time" / f"{s}.csv.gz" for s in ("train", "valid", "test")}}
    missing = [str(p.relative_to(base.parent)) for p in files.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"ogbn-arxiv: {', '.join(missing)} not found under {root}; nothing is downloaded "
                                "here, so copy OGB's ogbn_arxiv folder (raw/ and split/) there")
    x = torch.from_numpy(_read_csv(files["feat"], np.float32))
    n = x.shape[0]
    y = torch.from_numpy(_read_csv(files["label"], np.int64).reshape(-1))
    edges = torch.from_numpy(_read_csv(files["edge"], np.int64)).t()
    masks = []
    for split in ("train", "valid", "test"):
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.from_numpy(_read_csv(files[split], np.int64).reshape(-1))] = True
        masks.append(mask)
    return Graph(x, y, undirected(edges), *masks, name="ogbn-arxiv")


def _read_csv(path: Path, dtype) -> np.ndarray:
    with gzip.open(path, "rt") as f:
        return np.atleast_2d(np.loadtxt(f, delimiter=",", dtype=dtype))


class _ArrayUnpickler(pickle.Unpickler):
    """Admits only the classes Planetoid pickles use: numpy arrays, scipy.sparse matrices, containers."""

    # Python 2 pickles (the original files) and protocol-2 pickles written by Python 3 name the builtins
    # module "__builtin__"; copy_reg._reconstructor only instantiates classes that pass this same check.
    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("collections", "defaultdict"), ("_codecs", "encode"),  # protocol 2 rebuilds numpy's raw bytes with it
        ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
        *((module, name) for module in ("builtins", "__builtin__")
          for name in ("list", "dict", "set", "int", "float", "tuple", "object"))}

    def find_class(self, module: str, name: str):
        allowed = (module, name) in self._ALLOWED or module.split(".")[0] == "numpy" or (
            module.startswith("scipy.sparse") and not name.startswith("_"))
        if not allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a Planetoid file")
        return super().find_class(module, name)


def _safe_unpickle(path: Path):
    try:
        return _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ValueError(f"{path}: not a valid Planetoid file ({exc})") from exc


def _dense(matrix) -> np.ndarray:
    return np.asarray(matrix.todense() if hasattr(matrix, "todense") else matrix, dtype=np.float32)
