"""`BQQLayout`: the packed factors of one BQQ layer, laid out for the matmul kernels.

A layer's (M, N) weight is an R × C grid of groups; group (a, b) has ``row_size[a]`` rows,
``col_size[b]`` columns, inner dimension ``rank[a, b]`` and up to P stacks:

    W_ab = Σ_i (r_i Y_i Z_i + s_i Y_i 1 + t_i 1 Z_i) + u

The kernels never build W. For a token x (its N_b columns of block b):

    v_i  = Z_i x                     (rank entries; bit-conditional sums of x)
    W_ab x = Σ_i Y_i (r_i v_i) + (Σ_i s_i rowsum(Y_i) + u) Σx + Σ_i t_i Σ_k v_ik

so per group we keep the packed bits (the same bytes as the storage format: little bit order, packed
along the last axis), ``r`` and ``t`` per stack, and ``rowterm`` = Σ_i s_i rowsum(Y_i) + u per row
(M_g floats: derived from the stored bits and scalars, not a weight copy). Groups are padded to the
largest group with zero bytes, which contribute nothing; missing stacks have zero bits and scalars.

This module depends only on numpy and torch, so the kernels do not import :mod:`bqq`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch


@dataclass
class BQQGroupFactors:
    """One group's stored factors (the fields of a single-group ``BQQMatrix``).

    y: uint8 (p, m, ceil(l/8)) packed Y_i; z: uint8 (p, l, ceil(n/8)) packed Z_i;
    scales: float32 (p, 3) rows (r_i, s_i, t_i); offset: u.
    """

    y: np.ndarray
    z: np.ndarray
    scales: np.ndarray
    offset: float


class LayoutTensors(NamedTuple):
    """The tensors of a :class:`BQQLayout` in the order the ``bqq::`` ops take them (shapes there)."""

    z: torch.Tensor
    y: torch.Tensor
    r: torch.Tensor
    t: torch.Tensor
    rowterm: torch.Tensor
    row_start: torch.Tensor
    row_size: torch.Tensor
    col_start: torch.Tensor
    col_size: torch.Tensor
    rank: torch.Tensor


@dataclass
class BQQLayout:
    """Padded, kernel-ready arrays of one layer (all torch tensors on ``device``); ``layout.z`` etc. read
    the fields of ``tensors``:

    z: uint8 (R, C, P, Lmax, NB); y: uint8 (R, C, P, Mmax, LB), where NB and LB are ceil(Nmax/8) and
    ceil(Lmax/8) rounded up to even numbers (zero pad bytes);
    r, t: float32 (R, C, P); rowterm: float32 (R, C, Mmax);
    row_start, row_size: int32 (R,); col_start, col_size: int32 (C,); rank: int32 (R, C).
    """

    shape: tuple[int, int]
    tensors: LayoutTensors  # in the ops' argument order
    _on_device: dict = field(default_factory=dict, repr=False)

    def __getattr__(self, name: str) -> torch.Tensor:
        if name in LayoutTensors._fields and "tensors" in self.__dict__:
            return getattr(self.tensors, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def device(self) -> torch.device:
        return self.tensors.z.device

    @property
    def stacks(self) -> int:
        return self.z.shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes of the packed bits and per-group floats the kernels read."""
        return sum(t.numel() * t.element_size() for t in (self.z, self.y, self.r, self.t, self.rowterm))

    def to(self, device: torch.device | str) -> BQQLayout:
        """This layout on ``device`` (copies are cached, so repeated forwards move nothing)."""
        device = torch.device(device)
        if device == self.device:
            return self
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = BQQLayout(self.shape, LayoutTensors(*(t.to(device) for t in self.tensors)))
        return self._on_device[key]


def _even(k: int) -> int:
    return k + (k % 2)


def build_layout(groups: Sequence[BQQGroupFactors], row_sizes: Sequence[int], col_sizes: Sequence[int]
                 ) -> BQQLayout:
    """Lay out ``groups`` (row-major over the R × C grid given by the part sizes) for the kernels."""
    rows, cols = len(row_sizes), len(col_sizes)
    if len(groups) != rows * cols:
        raise ValueError(f"{len(groups)} groups for a {rows}x{cols} grid")
    ranks = np.array([g.z.shape[1] for g in groups], np.int32).reshape(rows, cols)
    stacks = max(g.scales.shape[0] for g in groups)
    m_max, n_max, l_max = max(row_sizes), max(col_sizes), int(ranks.max())
    # Byte counts rounded up to even: the CPU kernel reads code bytes in pairs (zero bytes add nothing).
    z = np.zeros((rows, cols, stacks, l_max, _even(-(-n_max // 8))), np.uint8)
    y = np.zeros((rows, cols, stacks, m_max, _even(-(-l_max // 8))), np.uint8)
    scal = np.zeros((rows, cols, stacks, 3), np.float32)
    rowterm = np.zeros((rows, cols, m_max), np.float32)
    for index, g in enumerate(groups):
        a, b = divmod(index, cols)
        p, m, lb = g.y.shape
        l, nb = g.z.shape[1:]
        if m != row_sizes[a] or nb != -(-col_sizes[b] // 8) or lb != -(-l // 8) or g.z.shape[0] != p:
            raise ValueError(f"group ({a}, {b}): factors y{g.y.shape} z{g.z.shape} do not fit "
                             f"{row_sizes[a]}x{col_sizes[b]}")
        z[a, b, :p, :l, :nb] = g.z
        y[a, b, :p, :m, :lb] = g.y
        scal[a, b, :p] = g.scales
        # Row sums of Y_i from the packed bytes (popcount per row), then the per-row constant term.
        counts = np.unpackbits(g.y, axis=-1).sum(axis=-1, dtype=np.float64)  # (p, m); pad bits are zero
        rowterm[a, b, :m] = (g.scales[:, 1].astype(np.float64)[:, None] * counts).sum(axis=0) + float(g.offset)
    starts = lambda sizes: np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)  # noqa: E731
    t = torch.from_numpy
    return BQQLayout((int(sum(row_sizes)), int(sum(col_sizes))), LayoutTensors(
        z=t(z), y=t(y), r=t(np.ascontiguousarray(scal[..., 0])), t=t(np.ascontiguousarray(scal[..., 2])),
        rowterm=t(rowterm), row_start=t(starts(row_sizes)), row_size=t(np.asarray(row_sizes, np.int32)),
        col_start=t(starts(col_sizes)), col_size=t(np.asarray(col_sizes, np.int32)), rank=t(ranks)))
