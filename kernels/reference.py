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


def rebuild_groups(ys: torch.Tensor, zs: torch.Tensor, scales: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """The dense BQQ groups Σ_i (r_i Y_i Z_i + s_i (Y_i 1) 1ᵀ + t_i 1 (1ᵀ Z_i)) + offset, in float64.

    The one definition of a group's rebuild: the solver's residuals (both backends), ``BQQMatrix``'s
    dequantization and :func:`dequantize` use it, and the Triton rebuild kernel is tested against it.

    Args:
        ys: (B, p, m, l) {0,1}; zs: (B, p, l, n) {0,1} (any numeric dtype).
        scales: (B, p, 3) rows (r, s, t).
        offset: (B,) constants u, or (B, m) per-row terms.

    Returns:
        (B, m, n) float64 on ys's device. Y_i Z_i is a float32 product of 0/1 matrices: counts <= l, exact
        (also with TF32), and faster than float64; the scalars are applied in float64, per stack
        in the order (r Y Z + s Y1) + t 1Z, so the numpy solver's residuals stay what they were bit for bit.
    """
    nbatch, p, m, _ = ys.shape
    n = zs.shape[3]
    f64 = torch.float64
    sc = scales.to(f64)
    off = offset.to(f64)
    out = (off[:, None, None] if off.dim() == 1 else off[:, :, None]).expand(nbatch, m, n).clone()
    for i in range(p):
        y, z = ys[:, i].to(torch.float32), zs[:, i].to(torch.float32)
        yz = torch.bmm(y, z).to(f64)
        row = y.sum(dim=2, dtype=f64)[:, :, None]
        col = z.sum(dim=1, dtype=f64)[:, None, :]
        out += sc[:, i, 0, None, None] * yz + sc[:, i, 1, None, None] * row + sc[:, i, 2, None, None] * col
    return out


def dequantize(w: LayoutTensors, out_features: int, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    """The (M, N) = (out_features, in_features) weight of ``w`` (computed in float64, returned in ``dtype``).

    Each group is :func:`rebuild_groups` with s = 0 and the layout's row term (Σ_i s_i Y_i 1 + u) as offset.
    """
    out = torch.empty(out_features, in_features, dtype=torch.float64, device=w.z.device)
    rs, cs = w.row_start.tolist(), w.col_start.tolist()
    rn, cn = w.row_size.tolist(), w.col_size.tolist()
    for a, b in ((a, b) for a in range(len(rn)) for b in range(len(cn))):
        m, n, l = rn[a], cn[b], int(w.rank[a, b])
        y = unpack_little(w.y[a, b, :, :m], l)  # (P, m, l)
        z = unpack_little(w.z[a, b, :, :l], n)  # (P, l, n)
        r, t = w.r[a, b], w.t[a, b]
        scales = torch.stack([r, torch.zeros_like(r), t], dim=1)
        block = rebuild_groups(y[None], z[None], scales[None], w.rowterm[a, b, :m][None])
        out[rs[a]:rs[a] + m, cs[b]:cs[b] + n] = block[0]
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
