"""Compiled compute kernels used by :mod:`bqq`.

* ``kernels.cpu``: numba kernels: the solver's Gauss-Seidel sweep, the packed BQQ and bit-plane matmuls
  (multithreaded, deterministic: every output element is computed by one thread in a fixed order, so
  results do not depend on the thread count).
* ``kernels.gpu``: Triton kernels, imported lazily (triton is optional): the BQQ matmul's decode,
  factored and rebuild paths (:mod:`kernels.gpu.bqq_matmul`), fp32/fp16/bf16, no host sync per call.
* :func:`bqq_linear`: a quantized layer x·Ŵᵀ + b straight from packed bits, through the torch ops
  ``bqq::linear`` (BQQ) and ``bqq::plane_linear`` (UQ, GPTQ, BCQ as weighted bit planes)
  (:mod:`kernels.ops`: schemas, shape rules, gradients; so ``torch.compile`` sees them), whose kernel is
  picked per device (:mod:`kernels.dispatch`), on the layouts of :mod:`kernels.layout`;
  :mod:`kernels.reference` is the dense fallback and ground truth (ops ``bqq::dequantize``,
  ``bqq::plane_dequantize``).
"""

from .dispatch import backends, bqq_linear, default_backend, register_backend, set_default_backend
from .layout import (
    BQQGroupFactors,
    BQQLayout,
    LayoutTensors,
    PackedLayout,
    PlaneLayout,
    PlaneTensors,
    build_layout,
    build_plane_layout,
)
from .ops import dequantize_layout

__all__ = [
    "BQQGroupFactors",
    "BQQLayout",
    "LayoutTensors",
    "PackedLayout",
    "PlaneLayout",
    "PlaneTensors",
    "backends",
    "bqq_linear",
    "build_layout",
    "build_plane_layout",
    "default_backend",
    "dequantize_layout",
    "register_backend",
    "set_default_backend",
]
