"""Node-classification graphs and their propagation matrices, in plain torch (sparse COO).

The graph backend is a few lines of ``torch.sparse`` rather than torch_geometric: GCN and GIN layers
only need Â·X for a fixed sparse Â, which ``torch.sparse.mm`` does on CPU and GPU, and avoiding the
dependency keeps installs small and CI fast (PyG's optional compiled extensions do not install here).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

AGGREGATIONS = ("gcn", "mean", "sum")


@dataclass
class Graph:
    """One graph with node features and labels.

    x: (N, F) float32 features; y: (N,) int64 labels; edge_index: (2, E) int64, both directions of
    every undirected edge; train/val/test: (N,) bool masks.
    """

    x: torch.Tensor
    y: torch.Tensor
    edge_index: torch.Tensor
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    name: str = "graph"
    _adjacency: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        n = self.x.shape[0] if self.x.ndim == 2 else -1
        if self.x.ndim != 2 or not self.x.is_floating_point():
            raise ValueError(f"{self.name}: x must be a float (N, F) tensor, got {tuple(self.x.shape)} {self.x.dtype}")
        if not torch.isfinite(self.x).all():
            raise ValueError(f"{self.name}: features contain NaN or Inf")
        if self.y.shape != (n,) or self.y.dtype != torch.int64:
            raise ValueError(f"{self.name}: y must be int64 of shape ({n},), got {tuple(self.y.shape)} {self.y.dtype}")
        if self.edge_index.ndim != 2 or self.edge_index.shape[0] != 2 or self.edge_index.dtype != torch.int64:
            raise ValueError(f"{self.name}: edge_index must be int64 (2, E), got {tuple(self.edge_index.shape)}")
        if self.edge_index.numel() and (self.edge_index.min() < 0 or self.edge_index.max() >= n):
            raise ValueError(f"{self.name}: edge_index refers to nodes outside [0, {n})")
        for label in ("train", "val", "test"):
            mask = getattr(self, label)
            if mask.shape != (n,) or mask.dtype != torch.bool:
                raise ValueError(f"{self.name}: {label} must be a bool mask of shape ({n},)")
            if not mask.any():
                raise ValueError(f"{self.name}: the {label} split is empty")

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1

    @property
    def num_edges(self) -> int:
        """Undirected edges (each stored in both directions)."""
        return self.edge_index.shape[1] // 2

    def adjacency(self, kind: str = "gcn") -> torch.Tensor:
        """The (N, N) sparse propagation matrix, cached per kind and device of ``x``.

        ``"gcn"``: D^{-1/2}(A + I)D^{-1/2} with degrees clamped to >= 1; ``"mean"``: row-normalized A
        (mean over neighbours; isolated nodes get zeros); ``"sum"``: A.
        """
        key = (kind, self.x.device)
        if key not in self._adjacency:
            self._adjacency[key] = propagation_matrix(self.edge_index, self.num_nodes, kind).to(self.x.device)
        return self._adjacency[key]

    def to(self, device: torch.device | str) -> Graph:
        return Graph(self.x.to(device), self.y.to(device), self.edge_index.to(device), self.train.to(device),
                     self.val.to(device), self.test.to(device), self.name)


def propagation_matrix(edge_index: torch.Tensor, num_nodes: int, kind: str = "gcn") -> torch.Tensor:
    """Sparse COO (N, N) float32 matrix for ``kind`` in ("gcn", "mean", "sum"); see :meth:`Graph.adjacency`."""
    if kind not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {kind!r}")
    src, dst = edge_index.cpu()
    keep = src != dst  # self loops are added explicitly for "gcn" and never aggregated twice
    src, dst = src[keep], dst[keep]
    if kind == "gcn":
        loops = torch.arange(num_nodes)
        src, dst = torch.cat([src, loops]), torch.cat([dst, loops])
    values = torch.ones(src.numel())
    adj = torch.sparse_coo_tensor(torch.stack([dst, src]), values, (num_nodes, num_nodes), check_invariants=True)
    adj = adj.coalesce()
    rows, cols = adj.indices()
    values = adj.values().clamp(max=1.0)  # duplicate edges count once
    deg = torch.zeros(num_nodes).index_add_(0, rows, values)
    if kind == "gcn":
        inv_sqrt = deg.clamp(min=1.0).rsqrt()
        values = inv_sqrt[rows] * values * inv_sqrt[cols]
    elif kind == "mean":
        values = values / deg.clamp(min=1.0)[rows]
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (num_nodes, num_nodes),
                                   check_invariants=True).coalesce()


def undirected(edge_index: torch.Tensor) -> torch.Tensor:
    """Both directions of every edge, without self loops or duplicates, sorted: (2, E') int64."""
    src, dst = edge_index
    both = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], dim=1)
    both = both[:, both[0] != both[1]]
    return torch.unique(both, dim=1)
