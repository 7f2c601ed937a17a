"""The reference path: rebuild W from a :class:`~kernels.layout.BQQLayout` and call a dense matmul.

It is the fallback on devices without a kernel, the backward pass of every kernel (gradients with
respect to the input need Wᵀ), and the ground truth the kernel tests compare against.
"""

from __future__ import annotations

import torch

from .layout import BQQLayout


def unpack_little(packed: torch.Tensor, count: int) -> torch.Tensor:
    """uint8 (..., ceil(count/8)) in little bit order -> float32 {0,1} (..., count).

    The torch twin of ``bqq.format.unpack_bits`` (numpy), for layouts on any device; ``kernels`` does not
    import ``bqq``, which imports it.
    """
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*packed.shape[:-1], -1)[..., :count].float()


def dequantize_layout(layout: BQQLayout, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (M, N) weight the layout encodes (computed in float64, returned in ``dtype``)."""
    out = torch.empty(layout.shape, dtype=torch.float64, device=layout.device)
    rows, cols = layout.rank.shape
    rs, cs = layout.row_start.tolist(), layout.col_start.tolist()
    rn, cn = layout.row_size.tolist(), layout.col_size.tolist()
    for a in range(rows):
        for b in range(cols):
            m, n, l = rn[a], cn[b], int(layout.rank[a, b])
            y = unpack_little(layout.y[a, b, :, :m], l).double()  # (P, m, l)
            z = unpack_little(layout.z[a, b, :, :l], n).double()  # (P, l, n)
            r, t = layout.r[a, b].double(), layout.t[a, b].double()
            w = torch.einsum("p,pml,pln->mn", r, y, z)
            w += layout.rowterm[a, b, :m].double()[:, None]
            w += torch.einsum("p,pn->n", t, z.sum(1))[None, :]
            out[rs[a]:rs[a] + m, cs[b]:cs[b] + n] = w
    return out.to(dtype)


def bqq_linear_reference(x: torch.Tensor, layout: BQQLayout) -> torch.Tensor:
    """x (..., N) -> x Wᵀ (..., M) through the dense weight (in x's dtype)."""
    return torch.nn.functional.linear(x, dequantize_layout(layout.to(x.device), x.dtype))
