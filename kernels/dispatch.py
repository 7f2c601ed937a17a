"""One op, ``bqq_linear``, with backends registered per device type.

    out = kernels.bqq_linear(x, layout, bias)          # picks the backend for x.device
    kernels.bqq_linear(x, layout, backend="reference")  # the dense reference path

Backends: ``numba`` (CPU, :mod:`kernels.cpu.bqq_matmul`), ``triton`` (CUDA, :mod:`kernels.gpu`, imported
only when first used) and ``reference`` (any device: rebuild W, dense matmul). The kernels compute in
fp32: fp16/bf16 inputs are computed in fp32 and cast back, fp64 inputs use the reference. Gradients
with respect to x go through the dense weight (kernels are forward-only; calibration trains only
biases and norms, so it needs this gradient but never a weight gradient).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

import torch

from .layout import BQQLayout
from .reference import bqq_linear_reference, dequantize_layout

KernelFn = Callable[[torch.Tensor, BQQLayout], torch.Tensor]

# device type -> {backend name: "module:function"}; the first registered is the default.
_REGISTRY: dict[str, dict[str, str]] = {}
_LOADED: dict[str, KernelFn] = {}
_DEFAULTS: dict[str, str] = {}
_AUTO: dict[str, str] = {}  # device type -> first importable backend (found once)


def register_backend(device_type: str, name: str, target: str) -> None:
    """Register ``target`` ("package.module:function", imported on first use) for ``device_type``."""
    _REGISTRY.setdefault(device_type, {})[name] = target
    _AUTO.pop(device_type, None)


def backends(device_type: str) -> list[str]:
    """Backends that can run on ``device_type`` (those whose imports succeed), then ``reference``."""
    names = [name for name in _REGISTRY.get(device_type, {}) if _try_load(device_type, name) is not None]
    return [*names, "reference"]


def set_default_backend(device_type: str, name: str | None) -> None:
    """Use ``name`` for ``device_type`` when no backend is passed (None: back to automatic)."""
    if name is not None and name not in backends(device_type):
        raise ValueError(f"backend {name!r} is not available on {device_type!r}; available: {backends(device_type)}")
    if name is None:
        _DEFAULTS.pop(device_type, None)
    else:
        _DEFAULTS[device_type] = name


def default_backend(device_type: str) -> str:
    """The backend ``bqq_linear`` uses on ``device_type``: set_default_backend, $BQQ_KERNEL, else the first
    registered one that imports, else ``reference``."""
    chosen = _DEFAULTS.get(device_type) or os.environ.get("BQQ_KERNEL")
    if chosen:
        return chosen
    if device_type not in _AUTO:
        _AUTO[device_type] = backends(device_type)[0]
    return _AUTO[device_type]


def _try_load(device_type: str, name: str) -> KernelFn | None:
    key = f"{device_type}:{name}"
    if key not in _LOADED:
        module_name, _, attr = _REGISTRY[device_type][name].partition(":")
        try:
            _LOADED[key] = getattr(importlib.import_module(module_name), attr)
        except ImportError:
            _LOADED[key] = None  # e.g. triton not installed
    return _LOADED[key]


def resolve(device_type: str, backend: str | None) -> KernelFn:
    """The kernel function for ``backend`` (None: the default) on ``device_type``."""
    name = backend or default_backend(device_type)
    if name == "reference":
        return bqq_linear_reference
    fn = _try_load(device_type, name) if name in _REGISTRY.get(device_type, {}) else None
    if fn is None:
        raise ValueError(f"backend {name!r} is not available on {device_type!r}; available: {backends(device_type)}")
    return fn


class _KernelLinear(torch.autograd.Function):
    """Forward through a kernel; backward dx = dy · W with W rebuilt densely (no weight gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layout: BQQLayout, fn: KernelFn) -> torch.Tensor:
        ctx.layout = layout
        return fn(x, layout)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w = dequantize_layout(ctx.layout.to(grad.device), grad.dtype)
        return grad @ w, None, None


def bqq_linear(x: torch.Tensor, layout: BQQLayout, bias: torch.Tensor | None = None, *,
               backend: str | None = None) -> torch.Tensor:
    """x (..., N) -> x Ŵᵀ + bias (..., M) for the BQQ weight Ŵ (M, N) encoded by ``layout``.

    Raises ValueError if x's last dimension is not N or the backend is unknown or unavailable.
    """
    m, n = layout.shape
    if x.shape[-1] != n:
        raise ValueError(f"input has {x.shape[-1]} features, the layer expects {n} (weight {m}x{n})")
    fn = resolve(x.device.type, backend)
    if fn is bqq_linear_reference or x.dtype == torch.float64:
        out = bqq_linear_reference(x, layout)
    else:
        xf = x if x.dtype == torch.float32 else x.float()
        if x.device != layout.z.device:
            layout = layout.to(x.device)
        if xf.requires_grad and torch.is_grad_enabled():
            out = _KernelLinear.apply(xf, layout, fn)
        else:
            out = fn(xf, layout)
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
    return out if bias is None else out + bias


register_backend("cpu", "numba", "bqq_kernels.cpu.bqq_matmul:bqq_linear_cpu")
register_backend("cuda", "triton", "bqq_kernels.gpu.bqq_matmul:bqq_linear_triton")
