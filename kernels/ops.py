"""The BQQ ops as torch sees them: ``bqq::linear`` and ``bqq::dequantize``.

Declared once here with their schemas, shape rules (fake impls, used by ``torch.compile`` and meta
tensors) and the gradient of ``bqq::linear`` with respect to x. Which kernel runs ``bqq::linear`` on a
device is :mod:`kernels.dispatch`'s business; ``bqq::dequantize`` is the reference rebuild everywhere.

    torch.ops.bqq.linear(x, z, y, r, t, rowterm, row_start, row_size, col_start, col_size, rank,
                         bias, out_features, backend)               # x (..., N) -> x Ŵᵀ + bias (..., M)
    torch.ops.bqq.dequantize(z, ..., rank, out_features, in_features, dtype)   # -> W (M, N)

The layout tensors are those of :class:`~kernels.layout.BQQLayout` (:class:`~kernels.layout.LayoutTensors`
order); ``bias`` is None or (M,) in x's dtype, and the output has x's dtype. The sizes are ints because
shape rules cannot read tensor values; ``backend`` "" is the device's default. Backends that can add the
bias in their own epilogue do (one launch fewer on a GPU); the others add it after.
"""

from __future__ import annotations

import torch

from .layout import BQQLayout, LayoutTensors
from .reference import dequantize

LIB = torch.library.Library("bqq", "DEF")
_LAYOUT_ARGS = ", ".join(f"Tensor {name}" for name in LayoutTensors._fields)
LIB.define(f"linear(Tensor x, {_LAYOUT_ARGS}, Tensor? bias, SymInt out_features, str backend) -> Tensor")
LIB.define(f"dequantize({_LAYOUT_ARGS}, SymInt out_features, SymInt in_features, ScalarType dtype) -> Tensor")
LINEAR = torch.ops.bqq.linear.default
DEQUANTIZE = torch.ops.bqq.dequantize.default
_LAYOUT_COUNT = len(LayoutTensors._fields)


@torch.library.register_fake("bqq::linear", lib=LIB)
def _linear_fake(x: torch.Tensor, *args) -> torch.Tensor:
    """x (..., N) -> an empty (..., M) like x; args: the layout tensors, bias, out_features M, backend."""
    return x.new_empty((*x.shape[:-1], args[_LAYOUT_COUNT + 1]))


@torch.library.register_fake("bqq::dequantize", lib=LIB)
def _dequantize_fake(*args) -> torch.Tensor:
    """An empty (M, N) in ``dtype`` on the layout's device; args: the layout tensors, M, N, dtype."""
    out_features, in_features, dtype = args[_LAYOUT_COUNT:]
    return args[0].new_empty((out_features, in_features), dtype=dtype)


def _dequantize(*args) -> torch.Tensor:
    return dequantize(LayoutTensors._make(args[:_LAYOUT_COUNT]), *args[_LAYOUT_COUNT:])


torch.library.impl("bqq::dequantize", "CompositeExplicitAutograd", _dequantize, lib=LIB)  # every device


def _setup_context(ctx, inputs, output) -> None:
    x, *args = inputs
    ctx.save_for_backward(*args[:_LAYOUT_COUNT])
    ctx.sizes = (args[_LAYOUT_COUNT + 1], x.shape[-1])


def _linear_backward(ctx, grad: torch.Tensor):
    """dx (..., N) = grad (..., M) · W: W rebuilt densely by ``bqq::dequantize`` (traceable, unlike the
    Python loop behind it); dbias = grad summed over the leading dimensions. The layout is constant: no
    gradient for it, nor for the ints and the name."""
    dx = dbias = None
    if ctx.needs_input_grad[0]:
        dx = grad @ DEQUANTIZE(*ctx.saved_tensors, *ctx.sizes, grad.dtype)
    if ctx.needs_input_grad[_LAYOUT_COUNT + 1]:
        dbias = grad.reshape(-1, grad.shape[-1]).sum(0)
    return (dx, *([None] * _LAYOUT_COUNT), dbias, None, None)


torch.library.register_autograd("bqq::linear", _linear_backward, setup_context=_setup_context, lib=LIB)


def dequantize_layout(layout: BQQLayout, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (M, N) weight the layout encodes (computed in float64, returned in ``dtype``)."""
    return DEQUANTIZE(*layout.tensors, *layout.shape, dtype)
