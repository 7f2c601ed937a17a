"""bqq: Binary Quadratic Quantization and first-order baselines.

    import bqq
    q = bqq.compress(w, bits=2)            # w: (m, n) torch tensor or numpy array
    w_hat = q.dequantize()                 # torch tensor, original shape and dtype
    bqq.save(q, "w.safetensors"); q2 = bqq.load("w.safetensors")

    model = bqq.quantize(model, bits=2)   # Linear/Conv2d layers of any nn.Module, e.g. a timm ViT
    bqq.save_quantized(model, "m.safetensors"); bqq.load_quantized("m.safetensors", fresh_model)

Methods are registered by name ("bqq", "uq", "bcq", "svd"); see ``bqq.available_methods()``.
"""

from . import _source_checkout  # noqa: F401  (first: `bqq_kernels` in a checkout that was never installed)
from .api import compress
from .format import FormatError
from .io import load, save
from .methods import available_methods, get_method, register_method
from .ptq import Calibration, load_quantized, quantize, save_quantized
from .quantized import QuantizedMatrix
from .version import __version__

__all__ = [
    "Calibration",
    "FormatError",
    "QuantizedMatrix",
    "__version__",
    "available_methods",
    "compress",
    "get_method",
    "load",
    "load_quantized",
    "quantize",
    "register_method",
    "save",
    "save_quantized",
]

from .hf import register_with_transformers

register_with_transformers()  # quant_method "bqq" for transformers: now if its registry is imported, else on its import
