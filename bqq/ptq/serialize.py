"""`save_quantized` / `load_quantized`: a quantized model in the shared packed format, no pickle.

The file holds every group of every quantized layer as a packed matrix (``"<layer>.weight.g<i>"``),
the rest of the state dict as plain tensors, and in its manifest a JSON model config (layer kinds,
shapes, group grids, convolution geometry, methods, bits, versions). The same config is written beside
the file as ``<name>.json`` for people and tools; loading trusts only the checksummed copy inside.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..format import FormatError
from ..grouping import GroupGrid
from ..io import Bundle, load_bundle, save_bundle
from ..version import __version__
from .modules import QuantizedConv2d, QuantizedLinear, QuantizedWeight, quantized_layers, replace_module
from .plan import classifier_name

CONFIG_KEY = "bqq_model_config"
CONFIG_FORMAT = "bqq.model"
CONFIG_VERSION = 1


def save_quantized(model: nn.Module, path: str | os.PathLike, *, model_name: str | None = None) -> Path:
    """Write ``model`` (after :func:`bqq.quantize`) to ``path`` (.safetensors) and its config to ``.json``.

    Returns the path of the JSON config.
    """
    path = Path(path)
    layers = dict(quantized_layers(model))
    if not layers:
        raise ValueError("the model has no quantized layers; call bqq.quantize(model) first")
    objects = {}
    config_layers = {}
    for name, module in layers.items():
        weight = module.qweight
        for i, q in enumerate(weight.groups):
            objects[f"{name}.weight.g{i}"] = q
        config_layers[name] = {
            "kind": "conv2d" if isinstance(module, QuantizedConv2d) else "linear",
            "shape": list(weight.shape),
            "row_sizes": list(weight.grid.row_sizes),
            "col_sizes": list(weight.grid.col_sizes),
            "methods": sorted({q.method for q in weight.groups}),
            "bits": sorted({q.bits for q in weight.groups}),
            "bits_per_weight": weight.bits_per_weight,
            "bias": module.bias is not None,
            "conv": _conv_config(module) if isinstance(module, QuantizedConv2d) else None,
        }
    config = {
        "format": CONFIG_FORMAT,
        "format_version": CONFIG_VERSION,
        "model_name": model_name or _model_name(model),
        "classifier": classifier_name(model),
        "library_version": __version__,
        "torch_version": torch.__version__,
        "layers": config_layers,
    }
    text = json.dumps(config, indent=2, sort_keys=True)
    save_bundle(Bundle(objects, dict(model.state_dict()), {CONFIG_KEY: text}), path)
    config_path = path.with_suffix(".json")
    config_path.write_text(text + "\n")
    return config_path


def load_quantized(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Restore a model written by :func:`save_quantized` into ``model`` (same architecture, e.g. freshly
    built with random weights) and return it. Its layers are replaced by quantized ones and every
    other tensor is loaded strictly; outputs equal the saved model's exactly.
    """
    bundle = load_bundle(path)
    config = _read_config(bundle, path)
    modules = dict(model.named_modules())
    used = set()
    for name, layer in config["layers"].items():
        weight = _layer_weight(bundle, name, layer, path)
        used.update(f"{name}.weight.g{i}" for i in range(len(weight.grid)))
        module = modules.get(name)
        expected = nn.Conv2d if layer["kind"] == "conv2d" else nn.Linear
        if not isinstance(module, (expected, QuantizedLinear, QuantizedConv2d)):
            raise ValueError(f"{path}: layer {name!r} ({layer['kind']}) is not in the model or is a "
                             f"{type(module).__name__}; pass the architecture the file was saved from")
        bias = torch.zeros(weight.shape[0]) if layer["bias"] else None
        new = (QuantizedConv2d(weight, bias, **_conv_args(layer["conv"])) if layer["kind"] == "conv2d"
               else QuantizedLinear(weight, bias))
        replace_module(model, name, new)
    extra = sorted(set(bundle.objects) - used)
    if extra:
        raise FormatError(f"{path}: matrices {extra[:5]} belong to no layer in the config")
    try:
        model.load_state_dict(bundle.plain, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: the model's other tensors do not match the file: {exc}") from exc
    return model


def _read_config(bundle: Bundle, path) -> dict[str, Any]:
    try:
        config = json.loads(bundle.metadata[CONFIG_KEY])
    except (KeyError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: no quantized-model config; was it written by bqq.save_quantized?") from exc
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
        raise FormatError(f"{path}: not a bqq model file")
    if not isinstance(config.get("format_version"), int) or config["format_version"] > CONFIG_VERSION:
        raise FormatError(f"{path}: model config version {config.get('format_version')!r} is newer than this "
                          f"bqq {__version__} reads ({CONFIG_VERSION}); upgrade bqq")
    if not isinstance(config.get("layers"), dict):
        raise FormatError(f"{path}: model config has no layers")
    return config


def _layer_weight(bundle: Bundle, name: str, layer: dict[str, Any], path) -> QuantizedWeight:
    try:
        grid = GroupGrid(tuple(layer["row_sizes"]), tuple(layer["col_sizes"]))
        if list(grid.shape) != layer["shape"]:
            raise ValueError("group sizes do not tile the shape")
        groups = [bundle.objects[f"{name}.weight.g{i}"] for i in range(len(grid))]
        return QuantizedWeight(grid, groups)
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{path}: layer {name!r}: inconsistent config or missing groups ({exc})") from exc


def _conv_config(module: QuantizedConv2d) -> dict[str, Any]:
    return {"in_channels": module.in_channels, "kernel_size": list(module.kernel_size), "stride": list(module.stride),
            "padding": module.padding if isinstance(module.padding, str) else list(module.padding),
            "dilation": list(module.dilation)}


def _conv_args(conv: dict[str, Any]) -> dict[str, Any]:
    padding = conv["padding"]
    return {"in_channels": conv["in_channels"], "kernel_size": tuple(conv["kernel_size"]),
            "stride": tuple(conv["stride"]), "padding": padding if isinstance(padding, str) else tuple(padding),
            "dilation": tuple(conv["dilation"])}


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and isinstance(cfg.get("architecture"), str):
        return cfg["architecture"]
    return type(model).__name__

