"""Which kernel runs ``bqq::linear`` (:mod:`kernels.ops`) on a device, and the Python entry ``bqq_linear``.

    out = bqq_kernels.bqq_linear(x, layout, bias)          # the default backend for x.device
    bqq_kernels.bqq_linear(x, layout, backend="reference")  # the dense reference path

Backends: ``numba`` (CPU, :mod:`kernels.cpu.bqq_matmul`), ``triton`` (CUDA, :mod:`kernels.gpu`, imported
only when first used; it picks its decode, factored or rebuild path per call) with ``triton-decode``,
``triton-factored`` and ``triton-rebuild`` forcing one path, and ``reference`` (any device: rebuild W,
dense matmul). The op is registered with torch for every device type that has a backend (and, as its
default, for all others, which get the reference); the registered function picks the backend when it
runs, so ``set_default_backend`` and ``$BQQ_KERNEL`` also steer compiled models.

Each backend declares the dtypes it computes in (``numba``: float32; ``triton``: float32, float16,
bfloat16; ``reference``: any): other float16/bfloat16 inputs are computed in float32 and cast back
(one rounding), and ``bqq_linear`` sends float64 inputs to the reference. Backends that fuse the bias
take it; for the others it is added in the compute dtype before the cast. Eager inference on a device
with a kernel (no autograd, not compiling) calls the op's body directly, which skips about 5-10 µs of
dispatch per call and gives the same numbers. Gradients with respect to x go through the dense weight
(kernels are forward-only; calibration trains only biases and norms, so it needs this gradient but
never a weight gradient).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import NamedTuple

import torch

from .layout import BQQLayout, LayoutTensors
from .ops import LIB, LINEAR
from .reference import linear_reference

# (x (T, N) in one of the backend's dtypes, layout, M[, bias (M,) in x's dtype if it fuses the bias])
# -> (T, M) in x's dtype
KernelFn = Callable[..., torch.Tensor]


class BackendTraits(NamedTuple):
    """What a backend's function takes: its compute dtypes, and whether it adds the bias itself."""

    dtypes: tuple[torch.dtype, ...] = (torch.float32,)
    fused_bias: bool = False


FP32_ONLY = BackendTraits()
_REFERENCE_TRAITS = BackendTraits((torch.float16, torch.bfloat16, torch.float32, torch.float64), True)

# device type -> {backend name: "module:function"}; the first registered is the default.
_REGISTRY: dict[str, dict[str, str]] = {}
_TRAITS: dict[tuple[str, str], BackendTraits] = {}
_LOADED: dict[str, KernelFn | None] = {}  # "device:name" -> the imported function, None if the import failed
_DEFAULTS: dict[str, str] = {}  # set_default_backend
_AUTO: dict[str, str] = {}  # device type -> $BQQ_KERNEL or the first importable backend (found once)
_RESOLVED: dict[tuple[str, str], KernelFn] = {}  # (device type, name) -> function: one lookup per call


def register_backend(device_type: str, name: str, target: str, traits: BackendTraits = FP32_ONLY) -> None:
    """Register ``target`` ("package.module:function", a :data:`KernelFn` imported on first use) for
    ``device_type``; the first backend of a device type also registers ``bqq::linear`` for it with torch."""
    if device_type not in _REGISTRY:
        torch.library.impl("bqq::linear", device_type, _linear, lib=LIB)
    _REGISTRY.setdefault(device_type, {})[name] = target
    _TRAITS[(device_type, name)] = traits
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
    """The eager body of ``bqq::linear`` on every device: args are the layout tensors, bias, M, backend."""
    return _run(x, LayoutTensors._make(args[:-3]), args[-3], args[-2], args[-1])


def _run(x: torch.Tensor, tensors: LayoutTensors, bias: torch.Tensor | None, out_features: int,
         backend: str) -> torch.Tensor:
    device_type = x.device.type
    name = backend or default_backend(device_type)
    fn = resolve(device_type, name)
    traits = _REFERENCE_TRAITS if fn is linear_reference else _TRAITS[(device_type, name)]
    compute = x
    if x.dtype not in traits.dtypes:
        if x.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"backend {name!r} computes in {[str(d) for d in traits.dtypes]}, got {x.dtype} "
                             "(backend 'reference' takes any dtype)")
        compute = x.float()  # half types in float32, one rounding back below
    if traits.fused_bias:
        out = fn(compute, tensors, out_features, None if bias is None else bias.to(compute.dtype))
    else:
        out = fn(compute, tensors, out_features)
        if bias is not None:
            out = out + bias.to(out.dtype)
    return out if out.dtype == x.dtype else out.to(x.dtype)


# Devices without a registered backend (e.g. mps) run the same function, which finds only the reference.
torch.library.impl("bqq::linear", "CompositeExplicitAutograd", _linear, lib=LIB)


def bqq_linear(x: torch.Tensor, layout: BQQLayout, bias: torch.Tensor | None = None, *,
               backend: str | None = None) -> torch.Tensor:
    """x (..., N) -> x Ŵᵀ + bias (..., M) for the BQQ weight Ŵ (M, N) encoded by ``layout``, in x's dtype.

    Moves the layout to x's device (cached by :meth:`BQQLayout.to`; quantized modules move theirs with
    the module, so no copy runs per call) and ``bias`` to x's dtype. Raises ValueError if x's last
    dimension is not N or the backend is unknown or unavailable.
    """
    m, n = layout.shape
    if x.shape[-1] != n:
        raise ValueError(f"input has {x.shape[-1]} features, the layer expects {n} (weight {m}x{n})")
    if x.dtype == torch.float64:
        backend = "reference"  # fp64 callers want fp64 results, which the kernels cannot give
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    if layout.device != x.device:
        layout = layout.to(x.device)
    grad = torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))
    if torch.compiler.is_compiling() or grad or x.device.type not in _REGISTRY:  # compile, autograd, meta: op
        return LINEAR(x, *layout.tensors, bias, m, backend or "")
    # eager inference on a kernel device: the op's own body, without ~5-10 µs of dispatch per call
    return _run(x, layout.tensors, bias, m, backend or "")


_TRITON = BackendTraits((torch.float32, torch.float16, torch.bfloat16), fused_bias=True)
register_backend("cpu", "numba", "bqq_kernels.cpu.bqq_matmul:bqq_linear_cpu")
register_backend("cuda", "triton", "bqq_kernels.gpu.bqq_matmul:bqq_linear_triton", _TRITON)
for _path in ("decode", "factored", "rebuild"):
    register_backend("cuda", f"triton-{_path}", f"bqq_kernels.gpu.bqq_matmul:linear_{_path}", _TRITON)
