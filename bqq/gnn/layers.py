"""Graph convolutions whose weights are plain ``nn.Linear`` modules, so that ``bqq.slt.convert`` turns
them into supermasked random layers (with coats, freezing and export) without a second implementation.
"""

from __future__ import annotations

import torch
from torch import nn

from .graph import Graph


class GCNConv(nn.Module):
    """Kipf-Welling graph convolution, transform first: Â (X W^T), Â = D^{-1/2}(A + I)D^{-1/2}.

    Input (N, in_dim) node features -> (N, out_dim).
    """

    aggregation = "gcn"

    def __init__(self, in_dim: int, out_dim: int, bias: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_dim)) if bias else None

    def forward(self, x: torch.Tensor, graph: Graph) -> torch.Tensor:
        out = torch.sparse.mm(graph.adjacency(self.aggregation), self.lin(x))
        return out if self.bias is None else out + self.bias


class GINConv(nn.Module):
    """Graph isomorphism convolution with a fixed ε: W((1 + ε) x + AGG_neighbours x), AGG = mean or sum.

    Input (N, in_dim) -> (N, out_dim).
    """

    def __init__(self, in_dim: int, out_dim: int, aggregation: str = "mean", eps: float = 0.0) -> None:
        super().__init__()
        if aggregation not in ("mean", "sum"):
            raise ValueError(f"GIN aggregation must be 'mean' or 'sum', got {aggregation!r}")
        self.aggregation, self.eps = aggregation, float(eps)
        self.lin = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor, graph: Graph) -> torch.Tensor:
        return self.lin((1.0 + self.eps) * x + torch.sparse.mm(graph.adjacency(self.aggregation), x))


CONVS = {"gcn": GCNConv, "gin": GINConv}


def make_conv(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """A graph convolution by name ("gcn" or "gin")."""
    if kind not in CONVS:
        raise ValueError(f"conv must be one of {sorted(CONVS)}, got {kind!r}")
    return CONVS[kind](in_dim, out_dim)
