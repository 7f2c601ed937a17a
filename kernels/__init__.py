"""Compiled compute kernels used by :mod:`bqq`.

* ``kernels.cpu``: numba kernels: the solver's Gauss-Seidel sweep and the packed BQQ matmul
  (multithreaded, deterministic: every output element is computed by one thread in a fixed order, so
  results do not depend on the thread count).
* ``kernels.gpu``: Triton kernels, imported lazily (triton is optional): the BQQ matmul's decode,
  factored and rebuild paths (:mod:`kernels.gpu.bqq_matmul`), fp32/fp16/bf16, no host sync per call.
* :func:`bqq_linear`: the BQQ layer x·Ŵᵀ + b straight from packed bits, through the torch op
  ``bqq::linear`` (:mod:`kernels.ops`: schema, shape rule, gradient; so ``torch.compile`` sees it),
  whose kernel is picked per device (:mod:`kernels.dispatch`), on the layout of :mod:`kernels.layout`;
  :mod:`kernels.reference` is the dense fallback and ground truth (op ``bqq::dequantize``).
"""

from .dispatch import backends, bqq_linear, default_backend, register_backend, set_default_backend
from .layout import BQQGroupFactors, BQQLayout, LayoutTensors, build_layout
from .ops import dequantize_layout

__all__ = [
    "BQQGroupFactors",
    "BQQLayout",
    "LayoutTensors",
    "backends",
    "bqq_linear",
    "build_layout",
    "default_backend",
    "dequantize_layout",
    "register_backend",
    "set_default_backend",
]
