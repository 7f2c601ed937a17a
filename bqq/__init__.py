"""bqq: Binary Quadratic Quantization and first-order baselines.

    import bqq
    q = bqq.compress(w, bits=2)            # w: (m, n) torch tensor or numpy array
    w_hat = q.dequantize()                 # torch tensor, original shape and dtype
    bqq.save(q, "w.safetensors"); q2 = bqq.load("w.safetensors")

    model = bqq.quantize(model, bits=2)   # Linear/Conv2d layers of any nn.Module, e.g. a timm ViT
    model = bqq.quantize(model, bqq.QuantizeConfig(layer=bqq.LayerConfig(method="bqq", bits=2)))  # the same
    bqq.save_quantized(model, "m.safetensors"); bqq.load_quantized("m.safetensors", fresh_model)

Methods are registered by name (``bqq.available_methods()``: "bqq", "uq", "bcq", "gptq", "svd", "svdq",
"vq", "lvq"); what ``bits`` means for each is ``bqq.methods.bits_meanings()``. ``import bqq`` also registers
quant_method "bqq" with Hugging Face transformers (:mod:`bqq.hf`): import bqq before ``from_pretrained``.
"""

from . import _source_checkout  # noqa: F401  (first: `bqq_kernels` in a checkout that was never installed)
from .api import compress
from .config import LayerConfig, LayerOverride, QuantizeConfig, RunConfig
from .format import FormatError
from .io import load, save
from .methods import available_methods, get_method, register_method
from .ptq import Calibration, load_quantized, quantize, save_quantized
from .quantized import QuantizedMatrix
from .version import __version__

__all__ = [
    "Calibration",
    "FormatError",
    "LayerConfig",
    "LayerOverride",
    "QuantizeConfig",
    "QuantizedMatrix",
    "RunConfig",
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

from .hf import register_with_transformers  # (importing bqq.hf also registers the transformers model family)

register_with_transformers()  # quant_method "bqq" for transformers: now if its registry is imported, else on its import
