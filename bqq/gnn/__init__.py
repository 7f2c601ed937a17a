"""`bqq.gnn`: graph neural networks with strong lottery tickets (multicoated masks, folding).

    from bqq import gnn, slt
    graph = gnn.sbm_graph()                                   # offline Cora-scale graph
    model = gnn.FoldedGNN(graph.x.shape[1], 192, graph.num_classes, stages=(8, 8), unshared_masks=True)
    slt.convert(model, method="msup", sparsity=0.5, coats=3, scope="global")
    gnn.train_node_classifier(model, graph, epochs=200)       # sparsity ramps over the first half
    slt.export(model, "gcn.safetensors"); slt.memory_report(model)

Layers and models are ordinary dense modules; ``bqq.slt`` masks them, stores them and counts their
memory, so there is one implementation of masks and of the packed format.
"""

from .data import PLANETOID, fashion_knn_graph, karate_club, load_ogbn_arxiv, load_planetoid, sbm_graph, split_masks
from .graph import Graph, propagation_matrix, undirected
from .layers import GCNConv, GINConv, make_conv
from .models import GNN, FoldedGNN, FoldedStage
from .train import accuracy, train_node_classifier

__all__ = [
    "GNN",
    "PLANETOID",
    "FoldedGNN",
    "FoldedStage",
    "GCNConv",
    "GINConv",
    "Graph",
    "accuracy",
    "fashion_knn_graph",
    "karate_club",
    "load_ogbn_arxiv",
    "load_planetoid",
    "make_conv",
    "propagation_matrix",
    "sbm_graph",
    "split_masks",
    "train_node_classifier",
    "undirected",
]
