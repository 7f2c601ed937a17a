"""Node-classification GNNs: a deep GCN/GIN and its multi-stage folded (recurrent) counterpart.

Both are ordinary dense models; ``bqq.slt.convert`` turns them into strong-lottery-ticket models. In a
folded stage one convolution runs ``iters`` times (one weight, and one mask after conversion); with
``unshared_masks`` every iteration has its own layer whose weight is tied to the first one and whose
``slt_weight_key`` is shared, so after conversion the iterations share one random weight but learn
separate masks. Every iteration has its own normalization.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .graph import Graph
from .layers import make_conv


def _norm(kind: str, dim: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(dim, affine=False)  # non-affine, as in the SLT papers: nothing to store
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch' or 'none', got {kind!r}")


class GNN(nn.Module):
    """``layers`` graph convolutions: in_dim -> hidden -> ... -> out_dim (logits).

    Hidden layers are conv -> norm -> ReLU -> dropout, with a residual connection between layers of
    equal width when ``residual`` (what keeps 8-32-layer GCNs trainable).
    Forward: (N, in_dim) features and the :class:`Graph` -> (N, out_dim).
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, layers: int = 2, *, conv: str = "gcn",
                 norm: str = "batch", dropout: float = 0.0, residual: bool = True) -> None:
        super().__init__()
        if layers < 2:
            raise ValueError(f"layers must be >= 2, got {layers}")
        dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
        self.convs = nn.ModuleList(make_conv(conv, a, b) for a, b in itertools.pairwise(dims))
        self.norms = nn.ModuleList(_norm(norm, hidden) for _ in range(layers - 1))
        self.dropout, self.residual = dropout, residual

    def forward(self, x: torch.Tensor, graph: Graph) -> torch.Tensor:
        for i, (conv, norm) in enumerate(zip(self.convs[:-1], self.norms, strict=True)):
            h = F.dropout(F.relu(norm(conv(x, graph))), self.dropout, self.training)
            x = x + h if self.residual and i > 0 else h
        return self.convs[-1](x, graph)


class FoldedStage(nn.Module):
    """One convolution applied ``iters`` times with residual updates and per-iteration normalization.

    ``weight_key`` names the shared random weight for ``bqq.slt.convert`` when masks are unshared.
    """

    def __init__(self, dim: int, iters: int, *, conv: str, norm: str, dropout: float, unshared_masks: bool,
                 weight_key: str) -> None:
        super().__init__()
        if iters < 1:
            raise ValueError(f"a folded stage needs iters >= 1, got {iters}")
        self.iters, self.unshared_masks, self.dropout = iters, unshared_masks, dropout
        self.convs = nn.ModuleList(make_conv(conv, dim, dim) for _ in range(iters if unshared_masks else 1))
        for c in self.convs:
            c.lin.weight = self.convs[0].lin.weight  # one weight per stage (tied when masks are unshared)
            c.lin.slt_weight_key = weight_key
        self.norms = nn.ModuleList(_norm(norm, dim) for _ in range(iters))

    def forward(self, x: torch.Tensor, graph: Graph) -> torch.Tensor:
        for t in range(self.iters):
            conv = self.convs[t if self.unshared_masks else 0]
            x = x + F.dropout(F.relu(self.norms[t](conv(x, graph))), self.dropout, self.training)
        return x


class FoldedGNN(nn.Module):
    """Multi-stage folding of a deep residual GNN: an input convolution, ``len(stages)`` folded stages
    (stage s runs ``stages[s]`` times) and an output convolution; depth = 2 + sum(stages).

    Forward: (N, in_dim) features and the :class:`Graph` -> (N, out_dim).
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, stages: Sequence[int] = (4, 4), *,
                 conv: str = "gcn", norm: str = "batch", dropout: float = 0.0, unshared_masks: bool = False) -> None:
        super().__init__()
        if not stages:
            raise ValueError("at least one folded stage is needed")
        self.inp = make_conv(conv, in_dim, hidden)
        self.inp_norm = _norm(norm, hidden)
        self.stages = nn.ModuleList(
            FoldedStage(hidden, iters, conv=conv, norm=norm, dropout=dropout, unshared_masks=unshared_masks,
                        weight_key=f"stages.{s}.weight") for s, iters in enumerate(stages))
        self.out = make_conv(conv, hidden, out_dim)
        self.dropout = dropout

    @property
    def depth(self) -> int:
        return 2 + sum(stage.iters for stage in self.stages)

    def forward(self, x: torch.Tensor, graph: Graph) -> torch.Tensor:
        x = F.dropout(F.relu(self.inp_norm(self.inp(x, graph))), self.dropout, self.training)
        for stage in self.stages:
            x = stage(x, graph)
        return self.out(x, graph)
