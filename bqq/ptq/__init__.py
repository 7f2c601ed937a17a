"""Model PTQ: `quantize` a model's layers, calibrate, save and load (see bqq.ptq.quantize)."""

from .calibrate import Calibration, calibrate
from .fold import fold_batchnorm
from .modules import QuantizedConv2d, QuantizedLinear, cached_weights, quantized_layers
from .quantize import quantize
from .report import format_report, layer_report
from .serialize import load_quantized, save_quantized

__all__ = [
    "Calibration",
    "QuantizedConv2d",
    "QuantizedLinear",
    "cached_weights",
    "calibrate",
    "fold_batchnorm",
    "format_report",
    "layer_report",
    "load_quantized",
    "quantize",
    "quantized_layers",
    "save_quantized",
]
