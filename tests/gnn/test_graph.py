"""bqq.gnn.graph: propagation matrices against their formulas, graph validation."""

from __future__ import annotations

import pytest
import torch

from bqq import gnn


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
