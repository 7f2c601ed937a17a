"""Modules whose weight is stored quantized: `QuantizedLinear`, `QuantizedConv2d`, and `QuantizedWeight`,
the parametrization that gives any other module (a subclass with its own ``forward``, a grouped
convolution, a tied weight) its dequantized weight while it keeps its own ``forward``.

A layer's weight (out, in) — for a convolution (out, in·kh·kw) — is one grouped
:class:`~bqq.quantized.QuantizedMatrix` (``layer.qweight``), the same object ``bqq.compress`` returns
and ``bqq.save`` writes. No dense floating-point copy is kept. BQQ, UQ, GPTQ and BCQ layers compute
x·Ŵᵀ straight from the packed bits with :func:`bqq_kernels.bqq_linear` (numba on the CPU, Triton on
CUDA; the methods' ``kernel_layout``); the other methods (SVD, VQ, lattice, ...) and any layer whose
``backend`` is ``"reference"`` rebuild the weight at each forward. Within :func:`cached_weights` every
layer uses a dense cached weight instead. A :class:`QuantizedWeight` hands its module a dense Ŵ, which
it keeps between forwards when it is small (:data:`KEEP_DENSE_MAX_ELEMENTS`).

Layers follow ``.to(device)`` / ``.cuda()`` like parameters: the kernel layout (packed bits, fp32
scalars) moves with them, so a forward copies nothing. Dtype casts (``.half()``,
``.to(torch.bfloat16)``) change the bias only: the layout keeps its fp32 scalars, and a layer computes
in its input's dtype (the Triton kernels natively, the CPU kernel in fp32 with one rounding back).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import bqq_kernels

from ..quantized import QuantizedMatrix


class _QuantizedLayer(nn.Module):
    """Shared parts: the quantized weight, an optional FP bias, and the optional weight cache."""

    def __init__(self, weight: QuantizedMatrix, bias: torch.Tensor | None) -> None:
        super().__init__()
        if not isinstance(weight, QuantizedMatrix):
            raise TypeError(f"weight must be a bqq QuantizedMatrix, got {type(weight).__name__}")
        self.qweight = weight
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.backend: str | None = None  # kernel backend (None: the device's default; "reference": dense)
        self.selection: dict | None = None  # what bqq.quantize measured (see bqq.ptq.report)
        self._cache: torch.Tensor | None = None
        self._affine: list[_AffineGroup] | None = None
        self._layout: bqq_kernels.PackedLayout | bool | None = False  # False: not built yet
        self._layout_device: torch.device | None = None  # where _apply last moved the module
        self._kept: torch.Tensor | None = None  # QuantizedWeight: the small dense Ŵ last handed out

    def invalidate_kernel_layout(self) -> None:
        """Rebuild the kernel layout at the next forward (call after changing ``qweight``'s groups)."""
        self._layout = False
        self._kept = None

    def kernel_layout(self) -> bqq_kernels.PackedLayout | None:
        """The packed layout the kernels read (built once); None for a method without a kernel."""
        if self._layout is False:
            self._layout = self.qweight.kernel_layout()
            device = getattr(self, "_layout_device", None)  # absent in layers pickled before it existed
            if self._layout is not None and device is not None:
                self._layout = self._layout.to(device)
        return self._layout

    def _apply(self, fn, *args, **kwargs):
        # The layout is no buffer (a dtype cast such as .half() must leave its bits and fp32 scalars alone),
        # so follow device moves here: where fn sends a float tensor from the layout's device tells where
        # the module went (a dtype cast keeps the device).
        module = super()._apply(fn, *args, **kwargs)
        self._kept = None
        here = self._layout.device if isinstance(self._layout, bqq_kernels.PackedLayout) else self._layout_device
        self._layout_device = fn(torch.empty(0, device=here)).device
        if isinstance(self._layout, bqq_kernels.PackedLayout):
            self._layout = self._layout.to(self._layout_device)
        return module

    def uses_kernel(self) -> bool:
        """Whether forwards run the packed kernel (a method with a kernel, no dense cache or refit active)."""
        return (self._affine is None and self._cache is None and self.backend != "reference"
                and self.kernel_layout() is not None)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> x Ŵᵀ + b (..., out): the packed kernel when possible, else the dense weight."""
        if self.uses_kernel():
            return bqq_kernels.bqq_linear(x, self.kernel_layout(), self.bias, backend=self.backend)
        return F.linear(x, self.weight_matrix(x.dtype, x.device), self.bias)

    def weight_matrix(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The dequantized (out, in) weight, from the cache when :func:`cached_weights` is active."""
        if self._affine is not None:
            return self._affine_weight().to(dtype=dtype, device=device)
        if self._cache is not None:
            if self._cache.dtype != dtype or self._cache.device != device:
                self._cache = self._cache.to(dtype=dtype, device=device)
            return self._cache
        return self.qweight.dequantize(dtype).to(device)

    def _affine_weight(self) -> torch.Tensor:
        w = (self._cache if self._cache is not None else self.qweight.dequantize(torch.float32)).clone()
        for g in self._affine or ():
            theta = g.theta0 * (1 + g.delta)
            w[g.rows, g.cols] = g.basis[0] + torch.tensordot(theta, g.basis[1:], dims=1)
        return w

    @property
    def method(self) -> str:
        return self.qweight.method

    def _dense_weight(self) -> torch.Tensor:
        """Ŵ as (out, in) in the bias's dtype (fp32 without a bias) on the layer's device."""
        dtype = self.bias.dtype if self.bias is not None else torch.float32
        return self.weight_matrix(dtype, self._layout_device or torch.device("cpu"))


class QuantizedLinear(_QuantizedLayer):
    """Drop-in for ``nn.Linear``: y = x Wᵀ + b with W rebuilt from packed groups."""

    def __init__(self, weight: QuantizedMatrix, bias: torch.Tensor | None = None) -> None:
        super().__init__(weight, bias)
        self.out_features, self.in_features = weight.shape

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized (out, in) weight, rebuilt at each read: for code that reads ``layer.weight`` the
        way it would of an ``nn.Linear`` (``nn.TransformerEncoderLayer`` checks it, attention reads it)."""
        return self._dense_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"method={self.method}, bits_per_weight={self.qweight.bits_per_weight:.4f}")


class QuantizedConv2d(_QuantizedLayer):
    """Drop-in for a ``groups=1`` ``nn.Conv2d``; the (out, in, kh, kw) kernel is quantized as (out, in·kh·kw)."""

    def __init__(self, weight: QuantizedMatrix, bias: torch.Tensor | None, *, in_channels: int,
                 kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int] | str,
                 dilation: tuple[int, int], padding_mode: str = "zeros") -> None:
        super().__init__(weight, bias)
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode {padding_mode!r} is not supported; only 'zeros'")
        self.out_channels = weight.shape[0]
        self.in_channels = in_channels
        self.kernel_size = tuple(kernel_size)
        if weight.shape[1] != in_channels * self.kernel_size[0] * self.kernel_size[1]:
            raise ValueError(f"weight of shape {weight.shape} does not fit {in_channels} channels x {kernel_size}")
        self.stride, self.padding, self.dilation = tuple(stride), padding, tuple(dilation)

    @classmethod
    def conv_args(cls, conv: nn.Conv2d) -> dict:
        """The constructor arguments that describe ``conv``'s geometry."""
        if conv.groups != 1:
            raise ValueError("grouped/depthwise convolutions are not supported")
        return {"in_channels": conv.in_channels, "kernel_size": tuple(conv.kernel_size), "stride": tuple(conv.stride),
                "padding": conv.padding if isinstance(conv.padding, str) else tuple(conv.padding),
                "dilation": tuple(conv.dilation), "padding_mode": conv.padding_mode}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.padding, str) or x.dim() != 4 or not self.uses_kernel():  # the dense convolution
            w = self.weight_matrix(x.dtype, x.device).reshape(self.out_channels, self.in_channels, *self.kernel_size)
            return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation)
        # im2col: each output position is a row (in·kh·kw features, the weight's column order).
        batch, _, height, width = x.shape
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        out = self.matmul(cols.transpose(1, 2))  # (B, positions, out)
        h_out, w_out = (
            (size + 2 * pad - dil * (k - 1) - 1) // st + 1
            for size, pad, dil, k, st in zip((height, width), self.padding, self.dilation, self.kernel_size,
                                             self.stride, strict=True))
        return out.transpose(1, 2).reshape(batch, self.out_channels, h_out, w_out)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized (out, in, kh, kw) kernel, rebuilt at each read (as :attr:`QuantizedLinear.weight`)."""
        return self._dense_weight().reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"method={self.method}, bits_per_weight={self.qweight.bits_per_weight:.4f}")


# A QuantizedWeight keeps the dense Ŵ it hands its module when it has at most this many elements:
# depthwise and grouped convolutions, stems and other small weights, whose rebuild would cost more than
# their own compute at every forward, while the copy costs little memory (64 Ki elements: 256 KiB fp32).
KEEP_DENSE_MAX_ELEMENTS = 1 << 16


class QuantizedWeight(_QuantizedLayer):
    """A parametrization of ``module.weight`` by a quantized matrix: the module keeps its class and its
    ``forward``, and reading ``module.weight`` gives Ŵ in the weight's own shape, dtype and device.

    Installed with :meth:`install`. Ŵ is rebuilt when read, or taken from the :func:`cached_weights`
    cache; one of at most :data:`KEEP_DENSE_MAX_ELEMENTS` elements is kept until the weight, device or
    dtype changes. ``weight_shape``: the module's weight shape; ``transposed``: the module stores Wᵀ
    ((in, out), as ``transformers``' ``Conv1D``).
    """

    def __init__(self, weight: QuantizedMatrix, weight_shape: tuple[int, ...], dtype: torch.dtype,
                 transposed: bool = False) -> None:
        super().__init__(weight, None)
        rows, cols = weight_shape[0], math.prod(weight_shape[1:])
        if transposed:
            rows, cols = weight_shape[1], weight_shape[0]
        if (rows, cols) != tuple(weight.shape):
            raise ValueError(f"a {tuple(weight.shape)} quantized matrix cannot be a weight of shape {weight_shape}")
        self.weight_shape, self.transposed, self.dtype = tuple(weight_shape), transposed, dtype

    def forward(self) -> torch.Tensor:
        device = self._layout_device or torch.device("cpu")
        plain = self._affine is None and self._cache is None  # no refit or cache active
        kept = getattr(self, "_kept", None)  # absent in layers pickled before it existed
        if plain and kept is not None and kept.dtype == self.dtype and kept.device == device:
            return kept
        w = self.weight_matrix(self.dtype, device)
        w = w.t() if self.transposed else w.reshape(self.weight_shape)
        if plain and w.numel() <= KEEP_DENSE_MAX_ELEMENTS:
            self._kept = w
        return w

    def right_inverse(self, weight: torch.Tensor) -> tuple[()]:
        return ()  # the module keeps no original tensor: the quantized matrix is the weight

    def _apply(self, fn, *args, **kwargs):
        module = super()._apply(fn, *args, **kwargs)
        self.dtype = fn(torch.empty(0, dtype=self.dtype, device=self._layout_device)).dtype  # .half() etc.
        return module

    @classmethod
    def install(cls, modules: list[nn.Module], weight: QuantizedMatrix, transposed: bool = False) -> QuantizedWeight:
        """Make ``weight`` the weight of every module in ``modules`` (one module, or all that share a tied
        weight tensor); returns the parametrization."""
        current = modules[0].weight
        param = cls(weight, tuple(current.shape), current.dtype, transposed)
        param._layout_device = current.device
        for module in modules:
            parametrize.register_parametrization(module, "weight", param, unsafe=True)
        return param

    def extra_repr(self) -> str:
        return f"shape={self.weight_shape}, method={self.method}, bits_per_weight={self.qweight.bits_per_weight:.4f}"


def quantized_weight(module: nn.Module) -> QuantizedWeight | None:
    """The :class:`QuantizedWeight` parametrizing ``module.weight``, if any."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    first = module.parametrizations.weight[0]
    return first if isinstance(first, QuantizedWeight) else None


@dataclass
class _AffineGroup:
    """One group as W = basis[0] + Σ_j θ_j basis[j+1], θ = θ0 (1 + δ) with δ trainable."""

    index: int
    rows: slice
    cols: slice
    basis: torch.Tensor  # (K + 1, m_g, n_g)
    theta0: torch.Tensor  # (K,)
    delta: nn.Parameter  # (K,), starts at 0


def _affine_basis(q: QuantizedMatrix, index: int, theta: np.ndarray) -> torch.Tensor:
    """The exact affine decomposition of group ``index`` of q in its scalars (the codes fixed)."""
    try:
        q.set_group_scalars(index, np.zeros_like(theta))
        base = q.dequantize_group(index)
        parts = [base]
        for j in range(theta.size):
            unit = np.zeros_like(theta)
            unit[j] = 1.0
            q.set_group_scalars(index, unit)
            parts.append(q.dequantize_group(index) - base)
    finally:
        q.set_group_scalars(index, theta)
    return torch.from_numpy(np.stack(parts)).float()


@contextlib.contextmanager
def trainable_scalars(model: nn.Module) -> Iterator[list[nn.Parameter]]:
    """Within the block the FP32 scalars of every group with binary codes (BQQ, BCQ) are trainable.

    Yields the parameters: relative changes δ, one per scalar, θ = θ0 (1 + δ), so a single learning
    rate suits scalars of any magnitude. The weight is rebuilt from an exact affine basis per group
    (K + 1 dense copies of the group while active). On exit the trained scalars are written back.
    """
    layers = [m for _, m in quantized_layers(model)]
    params: list[nn.Parameter] = []
    try:
        for layer in layers:
            layer._affine = []
            q = layer.qweight
            for g, (_, _, rs, cs) in enumerate(q.grid.blocks()):
                theta = q.group_scalars(g)
                if theta.size == 0:
                    continue
                delta = nn.Parameter(torch.zeros(theta.size))
                layer._affine.append(_AffineGroup(g, rs, cs, _affine_basis(q, g, theta),
                                                  torch.from_numpy(theta).float(), delta))
                params.append(delta)
        yield params
    finally:
        for layer in layers:
            for g in layer._affine or ():
                layer.qweight.set_group_scalars(g.index, (g.theta0 * (1 + g.delta.detach())).double().numpy())
            layer._affine = None
            layer.invalidate_kernel_layout()


def quantized_layers(model: nn.Module) -> Iterator[tuple[str, _QuantizedLayer]]:
    """(name, layer) of every quantized layer in ``model``: a :class:`QuantizedLinear` /
    :class:`QuantizedConv2d`, or the :class:`QuantizedWeight` of a module that keeps its forward (named by
    that module; a weight shared by several modules is listed once, under the first)."""
    seen = set()
    for name, module in model.named_modules():
        layer = module if isinstance(module, (QuantizedLinear, QuantizedConv2d)) else quantized_weight(module)
        if layer is not None and id(layer) not in seen:
            seen.add(id(layer))
            yield name, layer


@contextlib.contextmanager
def cached_weights(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, quantized layers keep their dequantized weight instead of rebuilding it.

    Speeds up repeated forwards (calibration, evaluation) at the cost of one dense copy per layer,
    which is freed on exit. The weights are constants here: no gradient reaches them.
    """
    layers = [m for _, m in quantized_layers(model)]
    try:
        for m in layers:
            m._cache = m.qweight.dequantize(torch.float32)
        yield model
    finally:
        for m in layers:
            m._cache = None
