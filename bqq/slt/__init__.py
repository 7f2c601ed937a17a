"""`bqq.slt`: strong lottery tickets — supermasks over seeded random weights, stored as seed + mask bits.

    import bqq.slt as slt
    model = slt.convert(model, method="edge_popup", sparsity=0.5, seed=0)       # or "msup", coats=3
    model = slt.convert(model, sparsity=0.5, freeze=slt.FreezeConfig(prune=0.35, lock=0.35))
    slt.fit(model, train_loader, epochs=10)          # trains the scores only
    slt.export(model, "ticket.safetensors"); slt.load("ticket.safetensors", fresh_model)
    slt.memory_report(model)                         # bits per weight, MB, compression vs dense fp32

Weights come from a counter-based generator keyed by (seed, layer name) (:mod:`bqq.slt.rng`); masks
are stored in the packed-binary format shared with BQQ (:mod:`bqq.format`).
"""

from .convert import METHODS, SLTConfig, convert
from .export import export, load
from .freeze import FreezeConfig, erk_densities
from .layers import MaskedConv2d, MaskedLayer, MaskedLinear, ThresholdGroup, masked_layers
from .masks import coat_sparsities, kept_count
from .report import memory_report
from .train import evaluate, fit, set_sparsity_ramp

__all__ = [
    "METHODS",
    "FreezeConfig",
    "MaskedConv2d",
    "MaskedLayer",
    "MaskedLinear",
    "SLTConfig",
    "ThresholdGroup",
    "coat_sparsities",
    "convert",
    "erk_densities",
    "evaluate",
    "export",
    "fit",
    "kept_count",
    "load",
    "masked_layers",
    "memory_report",
    "set_sparsity_ramp",
]
