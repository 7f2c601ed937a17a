"""`save_quantized` / `load_quantized`: a quantized model in the shared packed format, no pickle.

The file holds every quantized layer's weight as one grouped packed matrix (``"<layer>.weight"``),
the rest of the state dict as plain tensors, and in its manifest a JSON model config (layer kinds,
shapes, convolution geometry, methods, bits, versions). The same config is written beside the file as
``<name>.json`` for people and tools; loading trusts only the checksummed copy inside. Model configs of
version 1 (one single-group matrix per group, ``"<layer>.weight.g<i>"``) still load: their groups are
assembled into one grouped matrix per layer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..common import replace_module
from ..config import QuantizeConfig
from ..format import FormatError
from ..grouping import GroupGrid
from ..io import Bundle, load_bundle, save_bundle
from ..methods import get_method
from ..quantized import QuantizedMatrix
from ..version import __version__
from . import families
from .layers import CONV2D, LINEAR, LINEAR_T, WEIGHT, LayerKind, layer_kind
from .modules import QuantizedConv2d, QuantizedLinear, QuantizedWeight, quantized_layers, quantized_weight
from .plan import classifier_name
from .report import coverage_report, record_left_fp

CONFIG_KEY = "bqq_model_config"
CONFIG_FORMAT = "bqq.model"
CONFIG_VERSION = 2  # 2: one grouped matrix per layer; 1: one matrix per group


def save_quantized(model: nn.Module, path: str | os.PathLike, *, model_name: str | None = None) -> Path:
    """Write ``model`` (after :func:`bqq.quantize`) to ``path`` (.safetensors) and its config to ``.json``.

    A Hugging Face ``transformers`` model also gets its architecture and config recorded, so that
    :func:`load_quantized` can rebuild it without a skeleton. Returns the path of the JSON config.
    """
    path = Path(path)
    objects, config = model_config(model, model_name=model_name)
    text = json.dumps(config, indent=2, sort_keys=True)
    save_bundle(Bundle(objects, dict(model.state_dict()), {CONFIG_KEY: text}), path)
    config_path = path.with_suffix(".json")
    config_path.write_text(text + "\n")
    return config_path


def model_config(model: nn.Module, *, model_name: str | None = None
                 ) -> tuple[dict[str, QuantizedMatrix], dict[str, Any]]:
    """The quantized weights of ``model`` by layer name and the model config that describes them (layer
    kinds, shapes, convolution geometry, methods, bits, what stayed FP and why, versions): what
    :func:`save_quantized` writes and :func:`restore_layers` reads. ValueError if nothing is quantized."""
    layers = dict(quantized_layers(model))
    if not layers:
        raise ValueError("the model has no quantized layers; call bqq.quantize(model) first")
    objects = {}
    config_layers = {}
    coverage = coverage_report(model)
    shared = {row["module"]: row["shared_with"] for row in coverage["quantized"]}
    for name, module in layers.items():
        weight = module.qweight
        objects[f"{name}.weight"] = weight
        config_layers[name] = {
            "kind": _kind(module),
            "shape": list(weight.shape),
            "method": weight.method,
            "bits": weight.bits,
            "bits_per_weight": weight.bits_per_weight,
            "selection": module.selection,
            "bias": module.bias is not None,
            "conv": _conv_config(module) if isinstance(module, QuantizedConv2d) else None,
        }
        if isinstance(module, QuantizedWeight):
            config_layers[name].update(weight_shape=list(module.weight_shape), transposed=module.transposed,
                                       shared_with=shared.get(name, []))
    config = {
        "format": CONFIG_FORMAT,
        "format_version": CONFIG_VERSION,
        "model_name": model_name or _model_name(model),
        "classifier": classifier_name(model),
        "library_version": __version__,
        "torch_version": torch.__version__,
        "layers": config_layers,
        "left_fp": {row["module"]: row["reason"] for row in coverage["left_fp"]},
        "coverage": {k: coverage[k] for k in ("total_params", "quantized_params", "quantized_fraction",
                                              "layer_fraction", "bits_per_weight", "model_bits_per_param")},
    }
    quantize_config = getattr(model, "bqq_config", None)
    if isinstance(quantize_config, QuantizeConfig):
        config["quantize_config"] = quantize_config.to_dict()
    config.update(families.describe(model))  # e.g. "hf": what rebuilds a transformers model
    return objects, config


def load_quantized(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Restore a model written by :func:`save_quantized` into ``model`` (same architecture, e.g. freshly
    built with random weights) and return it. Its layers are replaced by quantized ones and every
    other tensor is loaded strictly; outputs equal the saved model's exactly.

    Without ``model``: a file saved from a Hugging Face ``transformers`` model is rebuilt from the
    architecture and config it records, and a directory written by ``save_pretrained`` (or ``bqq quantize``)
    is loaded with ``from_pretrained`` (:func:`bqq.hf.from_pretrained`); both need ``transformers``.
    """
    if Path(path).is_dir():
        if model is not None:
            raise TypeError(f"{path} is a directory (a save_pretrained checkpoint), which loads without a model: "
                            "call bqq.load_quantized(path)")
        return families.load_directory(path)
    bundle = load_bundle(path)
    config = _read_config(bundle, path)
    if model is None:
        model = families.build(config, path)
        if model is None:
            raise TypeError(f"{path}: saved from a {config.get('model_name')}, not a Hugging Face model, so the "
                            "architecture is not recorded: pass a model of it, bqq.load_quantized(path, model)")
    weights, used = {}, set()
    for name, layer in config["layers"].items():
        weights[name], keys = _layer_weight(bundle, name, layer, config["format_version"], path)
        used.update(keys)
    extra = sorted(set(bundle.objects) - used)
    if extra:
        raise FormatError(f"{path}: matrices {extra[:5]} belong to no layer in the config")
    restore_layers(model, config["layers"], weights, path)
    _add_folded_biases(model, bundle.plain)
    try:
        model.load_state_dict(bundle.plain, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: the model's other tensors do not match the file: {exc}") from exc
    record_left_fp(model, config.get("left_fp") or {})
    restore_quantize_config(model, config.get("quantize_config"), path)
    families.finish(model)  # e.g. a transformers model saves again with save_pretrained
    return model


def restore_quantize_config(model: nn.Module, saved: Any, path: Any) -> None:
    """Set ``model.bqq_config`` from a saved config's ``quantize_config`` (absent in files written before
    configs were saved: then nothing is set); FormatError if it does not read."""
    if saved is None:
        return
    try:
        model.bqq_config = QuantizeConfig.from_dict(saved)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{path}: invalid quantize_config ({exc})") from exc


def restore_layers(model: nn.Module, layers: dict[str, dict[str, Any]], weights: dict[str, QuantizedMatrix],
                   path: Any) -> None:
    """Put each saved layer (``layers``: the model config's entries, ``weights``: their quantized weights by
    layer name) into ``model``'s module of that name, with its recorded selection. ``path`` names the
    source in errors."""
    modules = dict(model.named_modules())
    for name, layer in layers.items():
        _restore_layer(model, modules.get(name), name, layer, weights[name], path).selection = layer.get("selection")


def _add_folded_biases(model: nn.Module, plain: dict[str, torch.Tensor]) -> None:
    """A convolution built without a bias gets one where the file has it (BatchNorm was folded into it)."""
    modules = dict(model.named_modules())
    for key, value in plain.items():
        owner = modules.get(key.rpartition(".")[0])
        if key.endswith(".bias") and isinstance(owner, nn.modules.conv._ConvNd) and owner.bias is None:
            owner.bias = nn.Parameter(torch.zeros_like(value, device=owner.weight.device))


def _kind(module: nn.Module) -> str:
    if isinstance(module, QuantizedConv2d):
        return CONV2D
    return LINEAR if isinstance(module, QuantizedLinear) else WEIGHT


def _restore_layer(model: nn.Module, module: nn.Module | None, name: str, layer: dict[str, Any],
                   weight: QuantizedMatrix, path) -> nn.Module:
    """Put the saved layer into the skeleton's module ``name``; returns the quantized layer."""
    kind = layer["kind"]
    if kind == WEIGHT:
        if quantized_weight(module) is not None:  # restored already as a sharer of an earlier layer's weight
            return quantized_weight(module)
        current = getattr(module, "weight", None)
        if not isinstance(current, torch.Tensor) or list(current.shape) != layer["weight_shape"]:
            raise ValueError(f"{path}: layer {name!r} needs a weight of shape {layer['weight_shape']}, the model has "
                             f"{None if current is None else list(current.shape)}; pass the architecture it was "
                             "saved from")
        sharers = [module] + [model.get_submodule(n) for n in layer.get("shared_with", [])]
        return QuantizedWeight.install(sharers, weight, bool(layer.get("transposed")))
    found = layer_kind(module) if module is not None else None
    fits = {LINEAR: (LINEAR, LINEAR_T), CONV2D: (CONV2D,)}.get(kind, ())
    if isinstance(module, QuantizedConv2d if kind == CONV2D else QuantizedLinear) or (
            isinstance(found, LayerKind) and found.name in fits):
        bias = torch.zeros(weight.shape[0]) if layer["bias"] else None
        new = (QuantizedConv2d(weight, bias, **_conv_args(layer["conv"])) if kind == CONV2D
               else QuantizedLinear(weight, bias))
        replace_module(model, name, new)
        return new
    raise ValueError(f"{path}: layer {name!r} ({kind}) is not in the model or is a {type(module).__name__}; "
                     "pass the architecture the file was saved from")


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


def _layer_weight(bundle: Bundle, name: str, layer: dict[str, Any], version: int, path
                  ) -> tuple[QuantizedMatrix, list[str]]:
    """The layer's grouped weight and the bundle keys it used (v1: its groups, assembled)."""
    try:
        if version >= 2:
            key = f"{name}.weight"
            weight, keys = bundle.objects[key], [key]
        else:
            grid = GroupGrid(tuple(layer["row_sizes"]), tuple(layer["col_sizes"]))
            keys = [f"{name}.weight.g{i}" for i in range(len(grid))]
            groups = [bundle.objects[k] for k in keys]
            weight = get_method(groups[0].method).from_groups(grid, groups)
        if list(weight.shape) != layer["shape"]:
            raise ValueError(f"weight of shape {list(weight.shape)}, config says {layer['shape']}")
        return weight, keys
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{path}: layer {name!r}: inconsistent config or missing weight ({exc})") from exc


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

