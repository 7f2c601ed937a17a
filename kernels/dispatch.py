"""Which kernel runs ``bqq::linear`` (:mod:`kernels.ops`) on a device, and the Python entry ``bqq_linear``.

    out = bqq_kernels.bqq_linear(x, layout, bias)          # the default backend for x.device
    bqq_kernels.bqq_linear(x, layout, backend="reference")  # the dense reference path

Backends: ``numba`` (CPU, :mod:`kernels.cpu.bqq_matmul`), ``triton`` (CUDA, :mod:`kernels.gpu`, imported
only when first used) and ``reference`` (any device: rebuild W, dense matmul). The op is registered
with torch for every device type that has a backend (and, as its default, for all others, which get
the reference); the registered function picks the backend when it runs, so ``set_default_backend``
and ``$BQQ_KERNEL`` also steer compiled models. The kernels compute in fp32: ``bqq_linear`` computes
fp16/bf16 inputs in fp32 and casts back, and sends fp64 inputs to the reference. Eager inference on
a device with a kernel (no autograd, not compiling) calls the op's body directly, which skips about
5-10 µs of dispatch per call and gives the same numbers. Gradients with
respect to x go through the dense weight (kernels are forward-only; calibration trains only biases and
norms, so it needs this gradient but never a weight gradient).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

import torch

from .layout import BQQLayout, LayoutTensors
from .ops import LIB, LINEAR
from .reference import linear_reference

KernelFn = Callable[[torch.Tensor, LayoutTensors, int], torch.Tensor]  # (x (T, N) fp32, layout, M) -> (T, M)

# device type -> {backend name: "module:function"}; the first registered is the default.
_REGISTRY: dict[str, dict[str, str]] = {}
_LOADED: dict[str, KernelFn | None] = {}  # "device:name" -> the imported function, None if the import failed
_DEFAULTS: dict[str, str] = {}  # set_default_backend
_AUTO: dict[str, str] = {}  # device type -> $BQQ_KERNEL or the first importable backend (found once)
_RESOLVED: dict[tuple[str, str], KernelFn] = {}  # (device type, name) -> function: one lookup per call


def register_backend(device_type: str, name: str, target: str) -> None:
    """Register ``target`` ("package.module:function", a :data:`KernelFn` imported on first use) for
    ``device_type``; the first backend of a device type also registers ``bqq::linear`` for it with torch."""
    if device_type not in _REGISTRY:
        torch.library.impl("bqq::linear", device_type, _linear, lib=LIB)
    _REGISTRY.setdefault(device_type, {})[name] = target
    _AUTO.pop(device_type, None)
    _RESOLVED.clear()


def backends(device_type: str) -> list[str]:
    """Backends that can run on ``device_type`` (those whose imports succeed), then ``reference``."""
    names = [name for name in _REGISTRY.get(device_type, {}) if _try_load(device_type, name) is not None]
    return [*names, "reference"]


def set_default_backend(device_type: str, name: str | None) -> None:
    """Use ``name`` for ``device_type`` when no backend is passed (None: back to automatic)."""
    if name is None:
        _DEFAULTS.pop(device_type, None)
    else:
        resolve(device_type, name)  # raises ValueError if unavailable
        _DEFAULTS[device_type] = name


def default_backend(device_type: str) -> str:
    """The backend ``bqq_linear`` uses on ``device_type``: set_default_backend, else $BQQ_KERNEL (read at the
    device type's first call), else the first registered one that imports, else ``reference``."""
    name = _DEFAULTS.get(device_type) or _AUTO.get(device_type)
    if name is None:
        name = _AUTO[device_type] = os.environ.get("BQQ_KERNEL") or backends(device_type)[0]
    return name


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
    """The kernel function for ``backend`` (None or "": the default) on ``device_type``.

    Raises ValueError naming the available backends if ``backend`` is unknown or cannot be imported.
    """
    name = backend or default_backend(device_type)
    fn = _RESOLVED.get((device_type, name))
    if fn is None:
        fn = linear_reference if name == "reference" else None
        if fn is None and name in _REGISTRY.get(device_type, {}):
            fn = _try_load(device_type, name)
        if fn is None:
            raise ValueError(f"backend {name!r} is not available on {device_type!r}; "
                             f"available: {backends(device_type)}")
        _RESOLVED[(device_type, name)] = fn
    return fn


def _linear(x: torch.Tensor, *args) -> torch.Tensor:
    """The eager body of ``bqq::linear`` on every device: args are the layout tensors, M, backend."""
    return _run(x, LayoutTensors._make(args[:-2]), args[-2], args[-1])


def _run(x: torch.Tensor, tensors: LayoutTensors, out_features: int, backend: str) -> torch.Tensor:
    fn = resolve(x.device.type, backend)
    if fn is not linear_reference and x.dtype != torch.float32:
        raise ValueError(f"the BQQ kernels compute in float32, got {x.dtype} (backend 'reference' takes any dtype)")
    return fn(x, tensors, out_features)


# Devices without a registered backend (e.g. mps) run the same function, which finds only the reference.
torch.library.impl("bqq::linear", "CompositeExplicitAutograd", _linear, lib=LIB)


def bqq_linear(x: torch.Tensor, layout: BQQLayout, bias: torch.Tensor | None = None, *,
               backend: str | None = None) -> torch.Tensor:
    """x (..., N) -> x Ŵᵀ + bias (..., M) for the BQQ weight Ŵ (M, N) encoded by ``layout``.

    Moves the layout to x's device (cached by :meth:`BQQLayout.to`). Raises ValueError if x's last
    dimension is not N or the backend is unknown or unavailable.
    """
    m, n = layout.shape
    if x.shape[-1] != n:
        raise ValueError(f"input has {x.shape[-1]} features, the layer expects {n} (weight {m}x{n})")
    if x.dtype == torch.float64:
        backend = "reference"  # fp64 callers want fp64 results, which the fp32 kernels cannot give
    compute = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if layout.device != x.device:
        layout = layout.to(x.device)
    traced = torch.compiler.is_compiling() or (compute.requires_grad and torch.is_grad_enabled())
    if traced or compute.device.type not in _REGISTRY:  # compile, autograd, meta/fake tensors: the op
        out = LINEAR(compute, *layout.tensors, m, backend or "")
    else:  # eager inference on a kernel device: the op's own body, without ~5-10 µs of dispatch per call
        out = _run(compute, layout.tensors, m, backend or "")
    if out.dtype != x.dtype:
        out = out.to(x.dtype)
    return out if bias is None else out + bias


register_backend("cpu", "numba", "bqq_kernels.cpu.bqq_matmul:bqq_linear_cpu")
register_backend("cuda", "triton", "bqq_kernels.gpu.bqq_matmul:bqq_linear_triton")
