"""A bqq checkpoint in transformers' layout: what ``save_pretrained`` writes and ``from_pretrained`` reads
(the format is described in :mod:`bqq.hf`). Nothing here imports transformers."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..format import FormatError, content_digest
from ..io import _check_tensors, _parse_info  # bqq.load's own checks of a manifest entry and its arrays
from ..ptq.layers import WEIGHT
from ..ptq.modules import quantized_layers
from ..ptq.serialize import model_config, restore_layers
from ..quantized import QuantizedMatrix

QUANT_METHOD = "bqq"
HF_FORMAT = "bqq.hf"
HF_FORMAT_VERSION = 1
PACKED_INFIX = ".qweight."  # state-dict keys of packed arrays: "<layer>.qweight.<field>" (no module has such a child)


def packed_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors a checkpoint of ``model`` holds (its state dict plus every quantized layer's packed arrays
    as ``"<layer>.qweight.<field>"``) and its ``quantization_config`` entries (``layers``, ``left_fp``,
    ``coverage``, ``packed_sha256``, ``quantize_config``)."""
    objects, config = model_config(model)
    layers = config["layers"]
    packed: dict[str, np.ndarray] = {}
    for key, q in objects.items():
        name = key.removesuffix(".weight")
        layers[name]["matrix"] = q.info()
        for field, array in q.fields().items():
            packed[f"{name}{PACKED_INFIX}{field}"] = np.ascontiguousarray(array)
    state = dict(model.state_dict())
    clash = sorted(set(state) & set(packed))
    if clash:
        raise ValueError(f"the model has tensors named like bqq's packed arrays: {clash[:3]}")
    entries = {"format": HF_FORMAT, "format_version": HF_FORMAT_VERSION, "layers": layers,
               "left_fp": config["left_fp"], "coverage": config["coverage"],
               "fp_sha256": {key: _tensor_sha256(t) for key, t in state.items()}}
    entries["packed_sha256"] = _digest(entries, packed)
    entries["quantize_config"] = config.get("quantize_config")
    state.update({key: torch.from_numpy(array) for key, array in packed.items()})
    return state, entries


def _tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes as safetensors stores them (any dtype, bfloat16 included)."""
    import hashlib

    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}\0{tuple(t.shape)}\0".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _digest(entries: dict[str, Any], packed: dict[str, np.ndarray]) -> str:
    """SHA-256 over the manifest part of a quantization_config and the packed arrays (bqq.format's digest)."""
    manifest = {k: entries.get(k) for k in ("format", "format_version", "layers", "left_fp", "fp_sha256")}
    return content_digest(json.dumps(manifest, sort_keys=True, separators=(",", ":")), packed)


# --- a checkpoint -> the quantized model -----------------------------------------------------------

def read_checkpoint(files: list[str | os.PathLike], entries: dict[str, Any]) -> dict[str, QuantizedMatrix]:
    """The quantized weight of every layer in ``entries["layers"]`` from the packed arrays in ``files`` (the
    checkpoint's safetensors shards), each validated as ``bqq.load`` validates a file. FormatError on a file
    that does not read, a missing, extra or misshapen array, inconsistent content, packed arrays or manifest
    that disagree with ``packed_sha256``, or a floating-point tensor that disagrees with its ``fp_sha256``
    (those not stored under their saved name, such as a tied copy, are left to transformers)."""
    from safetensors import SafetensorError, safe_open

    where = f"bqq checkpoint {Path(files[0]).parent}" if files else "bqq checkpoint"
    fp_sha = entries.get("fp_sha256") or {}
    packed: dict[str, np.ndarray] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:  # "pt": bfloat16 FP tensors read too
                for key in f.keys():
                    if PACKED_INFIX in key:
                        packed[key] = f.get_tensor(key).numpy()
                    elif key in fp_sha and _tensor_sha256(f.get_tensor(key)) != fp_sha[key]:
                        raise FormatError(f"{file}: tensor {key!r} differs from the one saved; the checkpoint was "
                                          "modified or corrupted")
        except (SafetensorError, OSError, ValueError) as exc:
            if isinstance(exc, FormatError):
                raise
            raise FormatError(f"{file}: cannot read the checkpoint ({exc}); it is truncated or corrupted") from exc
    layers = entries.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise FormatError(f"{where}: quantization_config lists no quantized layers")
    if _digest(entries, packed) != entries.get("packed_sha256"):
        raise FormatError(f"{where}: checksum mismatch between config.json's quantization_config and the packed "
                          "weights; the checkpoint was modified, truncated or mixed with another one")
    weights, expected = {}, {}
    plans = {}
    for name, layer in layers.items():
        info = layer.get("matrix") if isinstance(layer, dict) else None
        cls, grid = _parse_info(name, info, where)
        try:
            specs = cls.field_specs(info, grid)
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{where}: layer {name!r}: invalid manifest entry ({exc})") from exc
        for field, spec in specs.items():
            expected[f"{name}{PACKED_INFIX}{field}"] = (name, field, spec)
        plans[name] = (cls, grid, info)
    _check_tensors(packed, expected, where)
    for name, (cls, grid, info) in plans.items():
        fields = {field: packed[key] for key, (owner, field, _) in expected.items() if owner == name}
        try:
            weights[name] = cls.from_fields(info, grid, fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{where}: layer {name!r}: inconsistent content ({exc})") from exc
        if list(weights[name].shape) != layers[name].get("shape"):
            raise FormatError(f"{where}: layer {name!r}: weight of shape {list(weights[name].shape)}, the config "
                              f"says {layers[name].get('shape')}")
    return weights


def local_checkpoint_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files of a local checkpoint directory (its index's shards, or model.safetensors)."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / shard for shard in shards]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")


def install_layers(model: nn.Module, entries: dict[str, Any], files: list[str | os.PathLike]) -> None:
    """Before transformers loads the FP tensors: put the checkpoint's quantized layers into ``model``."""
    weights = read_checkpoint(files, entries)
    layers = entries["layers"]
    for name, layer in layers.items():
        if layer.get("kind") == WEIGHT:
            # The module's weight is a meta tensor here, and a parametrization takes its device from it;
            # a zero-stride CPU stand-in of the same shape and dtype holds one element.
            module = model.get_submodule(name)
            current = module.weight
            module.weight = nn.Parameter(torch.zeros((), dtype=current.dtype, device="cpu").expand(current.shape),
                                         requires_grad=False)
    restore_layers(model, layers, weights, f"bqq checkpoint {Path(files[0]).parent}")
    # A quantized weight shared by tied modules (include=["lm_head"] on a tied LM) is one parametrization on
    # all of them, tied already: transformers (5.x) must not try to tie or initialize those as parameters.
    tied = getattr(model, "all_tied_weights_keys", None)
    if isinstance(tied, dict):
        shared = {f"{module}.weight" for name, layer in layers.items() if layer.get("kind") == WEIGHT
                  for module in (name, *layer.get("shared_with", []))}
        model.all_tied_weights_keys = {t: s for t, s in tied.items() if t not in shared and s not in shared}
    # The packed arrays are read here, not by transformers: keep them out of its "unexpected keys" report.
    ignored = set(model._keys_to_ignore_on_load_unexpected or ())
    model._keys_to_ignore_on_load_unexpected = ignored | {re.escape(PACKED_INFIX)}


def place_layers(model: nn.Module) -> None:
    """After loading: fresh kernel layouts, where transformers put the model's tensors."""
    device_map = getattr(model, "hf_device_map", None)
    fallback = next((p.device for p in model.parameters()), torch.device("cpu"))
    for name, layer in quantized_layers(model):
        # transformers' weight init may have written into the dense Ŵ a small parametrized weight keeps
        # (it initializes modules it did not load, e.g. an embedding): drop it, it is rebuilt from the codes.
        layer.invalidate_kernel_layout()
        device = _mapped_device(name, device_map) if isinstance(device_map, dict) else fallback
        if device is not None and device.type != "cpu":
            layer.to(device)


def _mapped_device(name: str, device_map: dict[str, Any]) -> torch.device | None:
    """The device ``device_map`` gives module ``name`` (its longest matching prefix)."""
    best = None
    for key in device_map:
        if (key == "" or name == key or name.startswith(key + ".")) and (best is None or len(key) > len(best)):
            best = key
    if best is None:
        return None
    value = device_map[best]
    if value == "disk":
        raise ValueError(f"bqq: layer {name!r} is mapped to 'disk'; offloading quantized layers is not supported")
    return torch.device("cuda", value) if isinstance(value, int) else torch.device(value)
