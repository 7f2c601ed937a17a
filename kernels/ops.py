"""The ops as torch sees them, one pair per layout family: ``bqq::linear`` / ``bqq::dequantize`` for
:class:`~kernels.layout.BQQLayout` and ``bqq::plane_linear`` / ``bqq::plane_dequantize`` for
:class:`~kernels.layout.PlaneLayout` (UQ, GPTQ, BCQ).

Declared once here with their schemas, shape rules (fake impls, used by ``torch.compile`` and meta
tensors) and the gradient of the linear op with respect to x. Which kernel runs a linear op on a
device is :mod:`kernels.dispatch`'s business; the dequantize ops are the reference rebuild everywhere.

    torch.ops.bqq.linear(x, z, y, r, t, rowterm, row_start, row_size, col_start, col_size, rank,
                         bias, out_features, backend)               # x (..., N) -> x Ŵᵀ + bias (..., M)
    torch.ops.bqq.dequantize(z, ..., rank, out_features, in_features, dtype)   # -> W (M, N)
    torch.ops.bqq.plane_linear(x, planes, coef, offset, col_start, col_size, bias, out_features, backend)
    torch.ops.bqq.plane_dequantize(planes, ..., col_size, out_features, in_features, dtype)

The layout tensors are those of the layout's tensors type (:class:`~kernels.layout.LayoutTensors`,
:class:`~kernels.layout.PlaneTensors`) in order; ``bias`` is None or (M,) in x's dtype, and the output
has x's dtype. The sizes are ints because shape rules cannot read tensor values; ``backend`` "" is the
device's default. Backends that can add the bias in their own epilogue do; the others add it after.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .layout import BQQLayout, LayoutTensors, PackedLayout, PlaneLayout, PlaneTensors
from .reference import dequantize, dequantize_planes, linear_reference, plane_linear_reference

LIB = torch.library.Library("bqq", "DEF")


@dataclass(frozen=True)
class OpFamily:
    """One layout family's ops: ``linear`` (x -> x Ŵᵀ + bias) and ``dequantize`` (-> Ŵ), their tensors
    type and the reference implementations (the fallback, the backward pass and the tests' truth)."""

    name: str  # the linear op's name; the dequantize op is named after it
    tensors: type[NamedTuple]
    reference_linear: Callable[..., torch.Tensor]  # (x, tensors, M, bias) -> (..., M)
    reference_dequantize: Callable[..., torch.Tensor]  # (tensors, M, N, dtype) -> (M, N)

    @property
    def count(self) -> int:
        return len(self.tensors._fields)

    @property
    def linear(self):
        return getattr(torch.ops.bqq, self.name).default

    @property
    def dequantize(self):
        return getattr(torch.ops.bqq, self.name.replace("linear", "dequantize")).default


def _define(family: OpFamily) -> None:
    args = ", ".join(f"Tensor {name}" for name in family.tensors._fields)
    dequantize_name = family.name.replace("linear", "dequantize")
    LIB.define(f"{family.name}(Tensor x, {args}, Tensor? bias, SymInt out_features, str backend) -> Tensor")
    LIB.define(f"{dequantize_name}({args}, SymInt out_features, SymInt in_features, ScalarType dtype) -> Tensor")
    count = family.count

    def linear_fake(x: torch.Tensor, *rest) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], rest[count + 1]))  # rest: tensors, bias, out_features, backend

    def dequantize_fake(*rest) -> torch.Tensor:
        out_features, in_features, dtype = rest[count:]
        return rest[0].new_empty((out_features, in_features), dtype=dtype)

    def dequantize_eager(*rest) -> torch.Tensor:
        return family.reference_dequantize(family.tensors._make(rest[:count]), *rest[count:])

    def setup_context(ctx, inputs, output) -> None:
        x, *rest = inputs
        ctx.save_for_backward(*rest[:count])
        ctx.sizes = (rest[count + 1], x.shape[-1])

    def backward(ctx, grad: torch.Tensor):
        """dx (..., N) = grad (..., M) · Ŵ, Ŵ rebuilt densely by the dequantize op (traceable, unlike the
        Python loop behind it); dbias = grad summed over the leading dimensions. The layout is constant:
        no gradient for it, nor for the ints and the name."""
        dx = dbias = None
        if ctx.needs_input_grad[0]:
            dx = grad @ family.dequantize(*ctx.saved_tensors, *ctx.sizes, grad.dtype)
        if ctx.needs_input_grad[count + 1]:
            dbias = grad.reshape(-1, grad.shape[-1]).sum(0)
        return (dx, *([None] * count), dbias, None, None)

    torch.library.register_fake(f"bqq::{family.name}", linear_fake, lib=LIB)
    torch.library.register_fake(f"bqq::{dequantize_name}", dequantize_fake, lib=LIB)
    torch.library.impl(f"bqq::{dequantize_name}", "CompositeExplicitAutograd", dequantize_eager, lib=LIB)
    torch.library.register_autograd(f"bqq::{family.name}", backward, setup_context=setup_context, lib=LIB)


BQQ_OPS = OpFamily("linear", LayoutTensors, linear_reference, dequantize)
PLANE_OPS = OpFamily("plane_linear", PlaneTensors, plane_linear_reference, dequantize_planes)
FAMILIES = {family.name: family for family in (BQQ_OPS, PLANE_OPS)}
for _family in FAMILIES.values():
    _define(_family)
LINEAR = BQQ_OPS.linear
DEQUANTIZE = BQQ_OPS.dequantize


def family_of(layout: PackedLayout) -> OpFamily:
    """The op family that reads ``layout`` (by its class's ``op``)."""
    return FAMILIES[layout.op]


def dequantize_layout(layout: BQQLayout | PlaneLayout, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (M, N) weight the layout encodes (computed in float64, returned in ``dtype``)."""
    return family_of(layout).dequantize(*layout.tensors, *layout.shape, dtype)
