"""Kernel-ready layouts of quantized layers: `BQQLayout` (binary factors) and `PlaneLayout` (bit planes).

**BQQLayout.** A layer's (M, N) weight is an R × C grid of groups; group (a, b) has ``row_size[a]`` rows,
``col_size[b]`` columns, inner dimension ``rank[a, b]`` and up to P stacks:

    W_ab = Σ_i (r_i Y_i Z_i + s_i Y_i 1 + t_i 1 Z_i) + u

The kernels never build W. For a token x (its N_b columns of block b):

    v_i  = Z_i x                     (rank entries; bit-conditional sums of x)
    W_ab x = Σ_i Y_i (r_i v_i) + (Σ_i s_i rowsum(Y_i) + u) Σx + Σ_i t_i Σ_k v_ik

so per group we keep the packed bits (the same bytes as the storage format: little bit order, packed
along the last axis), ``r`` and ``t`` per stack, and ``rowterm`` = Σ_i s_i rowsum(Y_i) + u per row
(M_g floats: derived from the stored bits and scalars, not a weight copy). Groups are padded to the
largest group with zero bytes, which contribute nothing; missing stacks have zero bits and scalars.

**PlaneLayout.** The first-order codes (UQ, GPTQ, BCQ) are weighted sums of B binary planes: in column
block b, row j of the weight is

    W[j, cols_b] = Σ_i coef[b, j, i] P_i[b, j, :] + offset[b, j]

UQ / GPTQ with b-bit codes k = Σ_i 2^i P_i: coef = 2^i · step, offset = zero; BCQ with signs
2 P_i − 1: coef = 2 α_i, offset = −Σ_i α_i. So W x = Σ_i coef_i (P_i x) + offset Σx, and P_i x is the
same bit-conditional sum of x as BQQ's Z_i x. The planes are the stored code bytes; the scalars are
per row of each column block (a row group's scalars repeated over its rows), so the kernels need not
know the row grouping.

This module depends only on numpy and torch, so the kernels do not import :mod:`bqq`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

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


class PlaneTensors(NamedTuple):
    """The tensors of a :class:`PlaneLayout` in the order the ``bqq::plane_*`` ops take them (shapes there)."""

    planes: torch.Tensor
    coef: torch.Tensor
    offset: torch.Tensor
    col_start: torch.Tensor
    col_size: torch.Tensor


@dataclass
class PackedLayout:
    """A layer's kernel-ready tensors (all on one device) and its (M, N) shape; ``layout.name`` reads the
    field ``name`` of ``tensors``. Subclasses name their tensors' type and the op family that reads them."""

    shape: tuple[int, int]
    tensors: NamedTuple  # in the ops' argument order
    _on_device: dict = field(default_factory=dict, repr=False)

    op: ClassVar[str]  # the op family (kernels.dispatch): "linear" or "plane_linear"

    def __getattr__(self, name: str) -> torch.Tensor:
        if "tensors" in self.__dict__ and name in self.__dict__["tensors"]._fields:
            return getattr(self.tensors, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def device(self) -> torch.device:
        return self.tensors[0].device

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor the kernels read (packed bits and scalars)."""
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def to(self, device: torch.device | str) -> PackedLayout:
        """This layout on ``device`` (copies are cached, so repeated forwards move nothing)."""
        device = torch.device(device)
        if device == self.device:
            return self
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = type(self)(self.shape, type(self.tensors)(*(t.to(device) for t in self.tensors)))
        return self._on_device[key]


@dataclass
class BQQLayout(PackedLayout):
    """Padded, kernel-ready arrays of one BQQ layer:

    z: uint8 (R, C, P, Lmax, NB); y: uint8 (R, C, P, Mmax, LB), where NB and LB are ceil(Nmax/8) and
    ceil(Lmax/8) rounded up to even numbers (zero pad bytes);
    r, t: float32 (R, C, P); rowterm: float32 (R, C, Mmax);
    row_start, row_size: int32 (R,); col_start, col_size: int32 (C,); rank: int32 (R, C).
    """

    op: ClassVar[str] = "linear"

    @property
    def stacks(self) -> int:
        return self.z.shape[2]


@dataclass
class PlaneLayout(PackedLayout):
    """Kernel-ready bit planes of one first-order layer (UQ, GPTQ, BCQ), C column blocks:

    planes: uint8 (C, B, M, NB), NB = ceil(largest block width / 8) rounded up to even (zero pad bytes);
    coef: float32 (C, M, B); offset: float32 (C, M); col_start, col_size: int32 (C,).
    """

    op: ClassVar[str] = "plane_linear"

    @property
    def planes_count(self) -> int:
        return self.planes.shape[1]


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
    t = torch.from_numpy
    return BQQLayout((int(sum(row_sizes)), int(sum(col_sizes))), LayoutTensors(
        z=t(z), y=t(y), r=t(np.ascontiguousarray(scal[..., 0])), t=t(np.ascontiguousarray(scal[..., 2])),
        rowterm=t(rowterm), row_start=t(_starts(row_sizes)), row_size=t(np.asarray(row_sizes, np.int32)),
        col_start=t(_starts(col_sizes)), col_size=t(np.asarray(col_sizes, np.int32)), rank=t(ranks)))


def build_plane_layout(shape: tuple[int, int], row_sizes: Sequence[int], col_sizes: Sequence[int],
                       planes: Sequence[np.ndarray], coef: np.ndarray, offset: np.ndarray) -> PlaneLayout:
    """Lay out a grouped first-order code for the kernels.

    Args:
        shape: (M, N); row_sizes, col_sizes: the R × C group grid's part sizes.
        planes: per group (row-major), uint8 (B, m_g, ceil(n_g/8)) packed planes (little bit order).
        coef: (R·C, B) float per group: plane i of a group weighs coef[g, i].
        offset: (R·C,) float per group: the constant added to every weight of the group.
    """
    rows, cols = len(row_sizes), len(col_sizes)
    m, n = shape
    if len(planes) != rows * cols or sum(row_sizes) != m or sum(col_sizes) != n:
        raise ValueError(f"{len(planes)} groups on a {rows}x{cols} grid of {list(row_sizes)} x {list(col_sizes)} "
                         f"do not tile a {m}x{n} matrix")
    count = coef.shape[1]
    nb = _even(-(-max(col_sizes) // 8))
    packed = np.zeros((cols, count, m, nb), np.uint8)
    coefs = np.zeros((cols, m, count), np.float32)
    offsets = np.zeros((cols, m), np.float32)
    r0 = 0
    for a, mg in enumerate(row_sizes):
        for b, ng in enumerate(col_sizes):
            g = a * cols + b
            if planes[g].shape != (count, mg, -(-ng // 8)):
                raise ValueError(f"group ({a}, {b}): planes {planes[g].shape} do not fit {count} planes of {mg}x{ng}")
            packed[b, :, r0:r0 + mg, :planes[g].shape[2]] = planes[g]
            coefs[b, r0:r0 + mg] = coef[g]
            offsets[b, r0:r0 + mg] = offset[g]
        r0 += mg
    t = torch.from_numpy
    return PlaneLayout((m, n), PlaneTensors(t(packed), t(coefs), t(offsets), t(_starts(col_sizes)),
                                            t(np.asarray(col_sizes, np.int32))))


def _starts(sizes: Sequence[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
