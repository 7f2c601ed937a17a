"""Which kernel runs a linear op (:mod:`kernels.ops`) on a device, and the Python entry ``bqq_linear``.

    out = bqq_kernels.bqq_linear(x, layout, bias)          # the default backend for x.device
    bqq_kernels.bqq_linear(x, layout, backend="reference")  # the dense reference path

``layout`` is a :class:`~kernels.layout.BQQLayout` (op ``bqq::linear``) or a
:class:`~kernels.layout.PlaneLayout` (UQ, GPTQ, BCQ; op ``bqq::plane_linear``): each op family has its
own backends, registered per device type. Backends: ``numba`` (CPU: the path :mod:`kernels.cpu.linear`
picks per call by token count; ``numba-table``, ``numba-table-generic``, ``numba-exact`` and, for bit
planes, ``numba-rebuild`` force one), ``triton``  (CUDA, :mod:`kernels.gpu`, imported only when first used;
for BQQ it picks its decode, factored or rebuild path per call, and ``triton-decode``,
``triton-factored`` and ``triton-rebuild`` force one), and ``reference`` (any device: rebuild W, dense
matmul). A linear op is registered with torch for every device type that has a backend (and, as its
default, for all others, which get the reference); the registered function picks the backend when it
runs, so ``set_default_backend`` and ``$BQQ_KERNEL`` also steer compiled models. A default name that a
family lacks (``triton-decode`` for bit planes) leaves that family on its own default; a name passed
explicitly must exist.

Each backend declares the dtypes it computes in (``numba``: float32; ``triton``: float32, float16,
bfloat16; ``reference``: any): other float16/bfloat16 inputs are computed in float32 and cast back
(one rounding), and ``bqq_linear`` sends float64 inputs to the reference. Backends that fuse the bias
take it; for the others it is added in the compute dtype before the cast. Eager inference on a device
with a kernel (no autograd, not compiling) calls the op's body directly, which skips the dispatcher's
fixed cost per call (``torch.ops.bqq.linear`` against ``bqq_linear`` in ``benchmarks/results/kernels.md``)
and gives the same numbers. Gradients with respect to x go through the dense weight
(kernels are forward-only; calibration trains only biases and norms, so it needs this gradient but
never a weight gradient).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import NamedTuple

import torch

from .layout import BQQLayout, PlaneLayout
from .ops import BQQ_OPS, FAMILIES, LIB, PLANE_OPS, OpFamily, family_of

# (x (T, N) in one of the backend's dtypes, layout tensors, M[, bias (M,) in x's dtype if it fuses the bias])
# -> (T, M) in x's dtype
KernelFn = Callable[..., torch.Tensor]


class BackendTraits(NamedTuple):
    """What a backend's function takes: its compute dtypes, and whether it adds the bias itself."""

    dtypes: tuple[torch.dtype, ...] = (torch.float32,)
    fused_bias: bool = False


FP32_ONLY = BackendTraits()
_REFERENCE_TRAITS = BackendTraits((torch.float16, torch.bfloat16, torch.float32, torch.float64), True)

# (op family, device type) -> {backend name: "module:function"}; the first registered is the default.
_REGISTRY: dict[tuple[str, str], dict[str, str]] = {}
_TRAITS: dict[tuple[str, str, str], BackendTraits] = {}
_LOADED: dict[tuple[str, str, str], KernelFn | None] = {}  # the imported function, None if the import failed
_DEFAULTS: dict[str, str] = {}  # device type -> set_default_backend's name
_AUTO: dict[tuple[str, str], str] = {}  # (op, device type) -> $BQQ_KERNEL or the first importable backend
_RESOLVED: dict[tuple[str, str, str], KernelFn] = {}  # (op, device type, name) -> function: one lookup per call


def register_backend(device_type: str, name: str, target: str, traits: BackendTraits = FP32_ONLY,
                     op: str = BQQ_OPS.name) -> None:
    """Register ``target`` ("package.module:function", a :data:`KernelFn` imported on first use) for op
    family ``op`` ("linear": BQQ, "plane_linear": bit planes) on ``device_type``; the first backend of a
    device type also registers the op for it with torch."""
    family = FAMILIES[op]
    if (op, device_type) not in _REGISTRY:
        torch.library.impl(f"bqq::{op}", device_type, _op_body(family), lib=LIB)
    _REGISTRY.setdefault((op, device_type), {})[name] = target
    _TRAITS[(op, device_type, name)] = traits
    _AUTO.pop((op, device_type), None)
    _RESOLVED.clear()


def backends(device_type: str, op: str = BQQ_OPS.name) -> list[str]:
    """Backends of op family ``op`` that can run on ``device_type`` (those whose imports succeed), then
    ``reference``."""
    names = [name for name in _REGISTRY.get((op, device_type), {}) if _try_load(op, device_type, name) is not None]
    return [*names, "reference"]


def set_default_backend(device_type: str, name: str | None) -> None:
    """Use ``name`` for ``device_type`` when no backend is passed (None: back to automatic). Families
    without a backend of that name keep their own default."""
    if name is None:
        _DEFAULTS.pop(device_type, None)
        return
    if not any(name in backends(device_type, op) for op in FAMILIES):
        raise ValueError(f"backend {name!r} is not available on {device_type!r}; available: "
                         f"{sorted({b for op in FAMILIES for b in backends(device_type, op)})}")
    _DEFAULTS[device_type] = name


def default_backend(device_type: str, op: str = BQQ_OPS.name) -> str:
    """The backend ``bqq_linear`` uses for ``op`` on ``device_type``: set_default_backend, else $BQQ_KERNEL
    (read at the first call), if the family has it; else the first registered one that imports, else
    ``reference``."""
    name = _DEFAULTS.get(device_type)
    if name is not None and name in backends(device_type, op):
        return name
    name = _AUTO.get((op, device_type))
    if name is None:
        env = os.environ.get("BQQ_KERNEL") or None
        available = backends(device_type, op)
        # a name no family has is kept, so that resolve() reports it
        unknown = env is not None and all(env not in backends(device_type, other) for other in FAMILIES)
        name = _AUTO[(op, device_type)] = env if env in available or unknown else available[0]
    return name


def _try_load(op: str, device_type: str, name: str) -> KernelFn | None:
    key = (op, device_type, name)
    if key not in _LOADED:
        module_name, _, attr = _REGISTRY[(op, device_type)][name].partition(":")
        try:
            _LOADED[key] = getattr(importlib.import_module(module_name), attr)
        except ImportError:
            _LOADED[key] = None  # e.g. triton not installed
    return _LOADED[key]


def resolve(device_type: str, backend: str | None, op: str = BQQ_OPS.name) -> KernelFn:
    """The kernel function for ``backend`` (None or "": the default) of op family ``op`` on ``device_type``.

    Raises ValueError naming the available backends if ``backend`` is unknown or cannot be imported.
    """
    name = backend or default_backend(device_type, op)
    fn = _RESOLVED.get((op, device_type, name))
    if fn is None:
        fn = FAMILIES[op].reference_linear if name == "reference" else None
        if fn is None and name in _REGISTRY.get((op, device_type), {}):
            fn = _try_load(op, device_type, name)
        if fn is None:
            raise ValueError(f"backend {name!r} is not available on {device_type!r}; available: "
                             f"{backends(device_type, op)}" + ("" if op == BQQ_OPS.name else f" (op {op})"))
        _RESOLVED[(op, device_type, name)] = fn
    return fn


def _op_body(family: OpFamily) -> KernelFn:
    """The eager body of ``family``'s linear op on every device: (x, layout tensors, bias, M, backend)."""
    count = family.count

    def body(x: torch.Tensor, *args) -> torch.Tensor:
        return _run(family, x, family.tensors._make(args[:count]), args[count], args[count + 1], args[count + 2])

    return body


def _run(family: OpFamily, x: torch.Tensor, tensors: NamedTuple, bias: torch.Tensor | None, out_features: int,
         backend: str) -> torch.Tensor:
    device_type = x.device.type
    name = backend or default_backend(device_type, family.name)
    fn = resolve(device_type, name, family.name)
    reference = fn is family.reference_linear
    traits = _REFERENCE_TRAITS if reference else _TRAITS[(family.name, device_type, name)]
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
for _family in FAMILIES.values():
    torch.library.impl(f"bqq::{_family.name}", "CompositeExplicitAutograd", _op_body(_family), lib=LIB)


def bqq_linear(x: torch.Tensor, layout: BQQLayout | PlaneLayout, bias: torch.Tensor | None = None, *,
               backend: str | None = None) -> torch.Tensor:
    """x (..., N) -> x Ŵᵀ + bias (..., M) for the weight Ŵ (M, N) encoded by ``layout`` (BQQ factors or
    bit planes), in x's dtype.

    Moves the layout to x's device (cached by the layout's ``to``; quantized modules move theirs with
    the module, so no copy runs per call) and ``bias`` to x's dtype. Raises ValueError if x's last
    dimension is not N or the backend is unknown or unavailable.
    """
    family = family_of(layout)
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
    if torch.compiler.is_compiling() or grad or (family.name, x.device.type) not in _REGISTRY:
        return family.linear(x, *layout.tensors, bias, m, backend or "")  # compile, autograd, meta: the op
    # eager inference on a kernel device: the op's own body, without the dispatcher's cost per call
    return _run(family, x, layout.tensors, bias, m, backend or "")


_TRITON = BackendTraits((torch.float32, torch.float16, torch.bfloat16), fused_bias=True)
_CPU = "bqq_kernels.cpu.linear"
register_backend("cpu", "numba", f"{_CPU}:bqq_linear_auto")
register_backend("cpu", "numba-table", f"{_CPU}:bqq_linear_tables")
register_backend("cpu", "numba-table-generic", f"{_CPU}:bqq_linear_table_generic")
register_backend("cpu", "numba-exact", f"{_CPU}:bqq_linear_cpu")
register_backend("cuda", "triton", "bqq_kernels.gpu.bqq_matmul:bqq_linear_triton", _TRITON)
for _path in ("decode", "factored", "rebuild"):
    register_backend("cuda", f"triton-{_path}", f"bqq_kernels.gpu.bqq_matmul:linear_{_path}", _TRITON)
register_backend("cpu", "numba", f"{_CPU}:plane_linear_auto", op=PLANE_OPS.name)
register_backend("cpu", "numba-table", f"{_CPU}:plane_linear_tables", op=PLANE_OPS.name)
register_backend("cpu", "numba-table-generic", f"{_CPU}:plane_linear_table_generic", op=PLANE_OPS.name)
register_backend("cpu", "numba-exact", f"{_CPU}:plane_linear_cpu", op=PLANE_OPS.name)
register_backend("cpu", "numba-rebuild", f"{_CPU}:plane_linear_rebuild", op=PLANE_OPS.name)
register_backend("cuda", "triton", "bqq_kernels.gpu.plane_matmul:plane_linear_triton", _TRITON, op=PLANE_OPS.name)
