"""The reference path: rebuild W from a layout's tensors and call a dense matmul (BQQ and bit planes).

It is the fallback on devices without a kernel, the backward pass of every kernel (gradients with
respect to the input need W), and the ground truth the kernel tests compare against. These are the
eager implementations of the ops ``bqq::dequantize`` and ``bqq::linear(backend="reference")``
(:mod:`kernels.ops`); they read group sizes as Python ints, so traced code reaches them only through
the ops.
"""

from __future__ import annotations

import torch

from .layout import LayoutTensors, PlaneTensors


def unpack_little(packed: torch.Tensor, count: int) -> torch.Tensor:
    """uint8 (..., ceil(count/8)) in little bit order -> float32 {0,1} (..., count).

    The torch twin of ``bqq.format.unpack_bits`` (numpy), for layouts on any device; ``kernels`` does not
    import ``bqq``, which imports it.
    """
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*packed.shape[:-1], -1)[..., :count].float()


def dequantize(w: LayoutTensors, out_features: int, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    """The (M, N) = (out_features, in_features) weight of ``w`` (computed in float64, returned in ``dtype``)."""
    out = torch.empty(out_features, in_features, dtype=torch.float64, device=w.z.device)
    rs, cs = w.row_start.tolist(), w.col_start.tolist()
    rn, cn = w.row_size.tolist(), w.col_size.tolist()
    for a, b in ((a, b) for a in range(len(rn)) for b in range(len(cn))):
        m, n, l = rn[a], cn[b], int(w.rank[a, b])
        y = unpack_little(w.y[a, b, :, :m], l).double()  # (P, m, l)
        z = unpack_little(w.z[a, b, :, :l], n).double()  # (P, l, n)
        block = torch.einsum("p,pml,pln->mn", w.r[a, b].double(), y, z)
        block += w.rowterm[a, b, :m].double()[:, None]
        block += torch.einsum("p,pn->n", w.t[a, b].double(), z.sum(1))[None, :]
        out[rs[a]:rs[a] + m, cs[b]:cs[b] + n] = block
    return out.to(dtype)


def linear_reference(x: torch.Tensor, w: LayoutTensors, out_features: int,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., N) -> x Wᵀ + bias (..., M) through the dense weight, in x's dtype (w, bias on x's device)."""
    return torch.nn.functional.linear(x, dequantize(w, out_features, x.shape[-1], x.dtype), bias)


def dequantize_planes(w: PlaneTensors, out_features: int, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    """The (M, N) weight of a :class:`~kernels.layout.PlaneLayout`'s tensors (computed in float64,
    returned in ``dtype``): per column block, Σ_i coef_i P_i + offset."""
    out = torch.empty(out_features, in_features, dtype=torch.float64, device=w.planes.device)
    for b, (c0, n) in enumerate(zip(w.col_start.tolist(), w.col_size.tolist(), strict=True)):
        planes = unpack_little(w.planes[b], n).double()  # (B, M, n)
        block = torch.einsum("mi,imn->mn", w.coef[b].double(), planes)
        out[:, c0:c0 + n] = block + w.offset[b].double()[:, None]
    return out.to(dtype)


def plane_linear_reference(x: torch.Tensor, w: PlaneTensors, out_features: int,
                           bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., N) -> x Wᵀ + bias (..., M) through the dense weight of bit planes ``w``, in x's dtype."""
    return torch.nn.functional.linear(x, dequantize_planes(w, out_features, x.shape[-1], x.dtype), bias)
