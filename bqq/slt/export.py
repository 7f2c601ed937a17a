"""`bqq.slt.export` / `bqq.slt.load`: a strong lottery ticket as seed + packed mask bits, no weights.

The file is the shared packed format (:mod:`bqq.format`, ``docs/format.md`` §5): per masked layer the
mask planes ``"{layer}.coat{i}"`` (little bit order), every other tensor of the state dict (biases,
norms, unconverted layers) as ``"plain:{name}"``, and a manifest with the seed, the RNG id, the
config and each layer's geometry. Planes use the hierarchical encoding of multicoated supermasks:
coat 1 covers the layer's free weights (all weights unless frozen), coat i + 1 covers only the
weights kept by coat i. So an Edge-Popup mask costs 1 bit per free weight and a K-coat mask
N·(1 + d_1 + … + d_{K-1}) bits. Loading regenerates the random weights and the freezing pattern from
the seed and checks them against a stored digest: the reloaded model's outputs are identical.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..common import replace_module
from ..format import FormatError, checked_planes, pack_bits, read_file, unpack_bits, write_file
from ..io import plain_arrays, read_plain
from .convert import SLTConfig
from .layers import MaskedConv2d, MaskedLayer, MaskedLinear, ThresholdGroup, masked_layers
from .rng import RNG_ID

CONTAINER = "slt"
SLT_VERSION = 1


def export(model: nn.Module, path: str | os.PathLike, *, metadata: Mapping[str, str] | None = None) -> None:
    """Write the ticket of ``model`` (after :func:`bqq.slt.convert` and training) to ``path``.

    Stores only the seed, the packed masks and the non-SLT tensors; the write is atomic.
    """
    layers = masked_layers(model)
    if not layers:
        raise ValueError("the model has no masked layers; call bqq.slt.convert(model) first")
    config = getattr(model, "slt_config", None)
    tensors: dict[str, np.ndarray] = {}
    specs = {}
    for name, layer in layers:
        planes = mask_planes(layer)
        for i, plane in enumerate(planes, start=1):
            tensors[f"{name}.coat{i}"] = pack_bits(plane)
        specs[name] = _layer_spec(layer) | {"plane_bits": [int(p.size) for p in planes]}
    masked_keys = _masked_state_keys(model)
    plain = {k: v for k, v in model.state_dict().items() if k not in masked_keys}
    plain_tensors, plain_info = plain_arrays(plain)
    tensors.update(plain_tensors)
    manifest = {"container": CONTAINER, "slt_version": SLT_VERSION, "rng": RNG_ID,
                "config": config.to_dict() if isinstance(config, SLTConfig) else None,
                "config_version": SLTConfig.VERSION,
                "layers": specs, "plain": plain_info, "user": dict(metadata or {})}
    write_file(path, tensors, manifest)


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Restore a ticket written by :func:`export` into ``model`` (the same architecture, dense or
    converted; its weights are ignored) and return it with fixed masks. Raises FormatError (a
    ValueError) for a truncated, tampered or foreign file and ValueError for a mismatched model.
    """
    tensors, manifest, _ = read_file(path)
    if manifest.get("container") != CONTAINER:
        raise FormatError(f"{path}: not an SLT ticket (container {manifest.get('container')!r}); "
                          "quantized matrices and models load with bqq.load / bqq.load_quantized")
    if manifest.get("slt_version") != SLT_VERSION or manifest.get("rng") != RNG_ID:
        raise FormatError(f"{path}: SLT version {manifest.get('slt_version')!r} / RNG {manifest.get('rng')!r}; "
                          f"this bqq reads version {SLT_VERSION} with RNG {RNG_ID}")
    specs = manifest.get("layers")
    if not isinstance(specs, dict) or not specs:
        raise FormatError(f"{path}: manifest has no layers")
    try:  # before the model is touched
        config = SLTConfig.from_dict(manifest["config"], manifest.get("config_version", 1)) \
            if manifest.get("config") else None
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{path}: invalid SLT config ({exc})") from exc
    modules = dict(model.named_modules())
    group = ThresholdGroup(scope="loaded")  # fixed masks never rank; the group only skips validation
    used = set()
    for name, spec in specs.items():
        try:
            layer = _build(spec, name, modules.get(name), group)
            planes = [checked_planes(tensors[f"{name}.coat{i}"], n, f"{name}.coat{i}")
                      for i, n in enumerate(spec["plane_bits"], start=1)]
        except (KeyError, TypeError) as exc:
            raise FormatError(f"{path}: layer {name!r}: missing or invalid entry ({exc})") from exc
        used.update(f"{name}.coat{i}" for i in range(1, len(planes) + 1))
        set_levels(layer, [unpack_bits(p, n) for p, n in zip(planes, spec["plane_bits"], strict=True)], path)
        replace_module(model, name, layer)
    extra = sorted(k for k in tensors if not k.startswith("plain:") and k not in used)
    if extra:
        raise FormatError(f"{path}: undeclared tensors {extra[:5]}")
    _load_plain(model, read_plain(tensors, manifest.get("plain", {}), path), path)
    if config is not None:
        model.slt_config = config
    return model


def mask_planes(layer: MaskedLayer) -> list[np.ndarray]:
    """The hierarchical bit planes of a layer's levels: plane 1 over the free weights (level >= 1),
    plane i + 1 over the weights with level >= i (level >= i + 1). uint8 {0,1} 1-D arrays."""
    if not layer.is_fixed:
        layer.group.refresh()
    levels = layer.levels.reshape(-1)[layer.free_mask()].cpu().numpy()
    planes = [(levels >= 1).astype(np.uint8)]
    for i in range(1, layer.coats):
        planes.append((levels[levels >= i] >= i + 1).astype(np.uint8))
    return planes


def set_levels(layer: MaskedLayer, planes: list[np.ndarray], path: Any = "ticket") -> None:
    """Inverse of :func:`mask_planes`: fix ``layer``'s levels from its planes and drop its scores."""
    if len(planes) != layer.coats:
        raise FormatError(f"{path}: layer {layer.key!r} has {len(planes)} planes for {layer.coats} coats")
    free = np.zeros(layer.n_free, np.uint8)
    if planes[0].size != layer.n_free:
        raise FormatError(f"{path}: layer {layer.key!r}: coat 1 has {planes[0].size} bits for {layer.n_free} "
                          "free weights")
    free += planes[0]
    for i in range(1, layer.coats):
        above = free >= i
        if planes[i].size != int(above.sum()):
            raise FormatError(f"{path}: layer {layer.key!r}: coat {i + 1} has {planes[i].size} bits but coat {i} "
                              f"keeps {int(above.sum())} weights")
        free[above] += planes[i]
    layer.scores = None
    layer.set_free_levels(torch.from_numpy(free).to(layer.levels.device))


def weight_digest(layer: MaskedLayer) -> str:
    """SHA-256 prefix of a layer's regenerated signs, freezing pattern and sigma (a regeneration check)."""
    h = hashlib.sha256(np.packbits(layer.signs.cpu().numpy().reshape(-1) > 0).tobytes())
    if layer.pattern is not None:
        h.update(layer.pattern.cpu().numpy().tobytes())
    h.update(repr(layer.sigma).encode())
    return h.hexdigest()[:32]


def _layer_spec(layer: MaskedLayer) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "kind": "conv2d" if isinstance(layer, MaskedConv2d) else "linear",
        "weight_shape": list(layer.weight_shape), "bias": layer.bias is not None,
        "seed": layer.seed, "key": layer.key, "weight_key": layer.weight_key,
        "sparsities": list(layer.sparsities), "scale": layer.scale,
        "use_abs": layer.use_abs, "freeze": list(layer.freeze_ratios) if layer.freeze_ratios else None,
        "digest": weight_digest(layer),
    }
    if isinstance(layer, MaskedConv2d):
        spec["conv"] = {"stride": _listify(layer.stride), "padding": _listify(layer.padding),
                        "dilation": _listify(layer.dilation), "groups": layer.groups}
    return spec


def _build(spec: Mapping[str, Any], name: str, module: nn.Module | None, group: ThresholdGroup) -> MaskedLayer:
    shape = tuple(spec["weight_shape"])
    common = dict(seed=spec["seed"], key=spec["key"], weight_key=spec["weight_key"], sparsity=spec["sparsities"],
                  scale=spec["scale"], freeze=tuple(spec["freeze"]) if spec["freeze"] else None,
                  use_abs=spec["use_abs"], group=group)
    if spec["kind"] == "linear":
        _check_module(module, name, (nn.Linear, MaskedLinear), shape)
        layer = MaskedLinear(shape[1], shape[0], bias=spec["bias"], **common)
    elif spec["kind"] == "conv2d":
        _check_module(module, name, (nn.Conv2d, MaskedConv2d), shape)
        conv = spec["conv"]
        layer = MaskedConv2d(shape[1] * conv["groups"], shape[0], tuple(shape[2:]), _tuple(conv["stride"]),
                             _tuple(conv["padding"]), _tuple(conv["dilation"]), conv["groups"], bias=spec["bias"],
                             **common)
    else:
        raise FormatError(f"layer {name!r}: unknown kind {spec['kind']!r}")
    if weight_digest(layer) != spec["digest"]:
        raise FormatError(f"layer {name!r}: the regenerated random weights do not match the ticket's digest "
                          "(file modified, or written by an incompatible bqq)")
    device = next((t.device for t in module.parameters()), None) if module is not None else None
    return layer.to(device) if device is not None and device.type != "meta" else layer


def _check_module(module: nn.Module | None, name: str, kinds: tuple[type, ...], shape: tuple[int, ...]) -> None:
    if not isinstance(module, kinds):
        found = "nothing" if module is None else type(module).__name__
        raise ValueError(f"layer {name!r} of the ticket is a {kinds[0].__name__}, the model has {found} there; "
                         "pass the architecture the ticket was exported from")
    have = tuple(module.weight_shape if isinstance(module, MaskedLayer) else module.weight.shape)
    if have != shape:
        raise ValueError(f"layer {name!r}: the ticket's weight shape is {shape}, the model's is {have}")


def _masked_state_keys(model: nn.Module) -> set[str]:
    keys = set()
    for name, _ in masked_layers(model):
        keys.update({f"{name}.scores", f"{name}.levels"})
    return keys


def _load_plain(model: nn.Module, plain: dict[str, torch.Tensor], path: Any) -> None:
    result = model.load_state_dict(plain, strict=False)
    masked = _masked_state_keys(model)
    missing = [k for k in result.missing_keys if k not in masked]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path}: the ticket's tensors do not fit the model (missing {missing[:5]}, unexpected "
                         f"{result.unexpected_keys[:5]}); pass the architecture the ticket was exported from")


def _listify(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _tuple(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v

