"""`bqq.save` / `bqq.load`: quantized matrices (and plain tensors) to and from the packed format.

A file holds named :class:`~bqq.quantized.QuantizedMatrix` objects, tensor ``"{name}.{field}"`` per
stored field, and optionally plain (unquantized) tensors under ``"plain:{name}"``, e.g. the biases and
norms of a quantized model. See ``docs/format.md``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .common import TORCH_DTYPES
from .format import FormatError, read_file, write_file
from .grouping import GroupGrid
from .methods import get_method
from .quantized import QuantizedMatrix

SINGLE_NAME = "matrix"
PLAIN_PREFIX = "plain:"
# Plain tensors are stored through numpy; bfloat16 has no numpy dtype and is stored as float32 (exact).
_PLAIN_STORAGE = {torch.bfloat16: torch.float32}


@dataclass
class Bundle:
    """Everything in one file: quantized matrices, plain tensors and user metadata."""

    objects: dict[str, QuantizedMatrix]
    plain: dict[str, torch.Tensor] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    container: str = "mapping"


def save(obj: QuantizedMatrix | Mapping[str, QuantizedMatrix], path: str | os.PathLike, *,
         metadata: Mapping[str, str] | None = None) -> None:
    """Write one quantized matrix, or a name -> matrix mapping, to ``path`` (safetensors).

    ``metadata`` (str -> str) is stored in the manifest under "user"; read it with :func:`read_metadata`.
    The write is atomic: an existing file is replaced only once the new one is complete.
    """
    if isinstance(obj, QuantizedMatrix):
        bundle = Bundle({SINGLE_NAME: obj}, container="single")
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, QuantizedMatrix) for v in obj.values()):
        bundle = Bundle(dict(obj))
    else:
        raise TypeError("save() takes a QuantizedMatrix or a non-empty mapping of name -> QuantizedMatrix")
    bundle.metadata = dict(metadata or {})
    save_bundle(bundle, path)


def load(path: str | os.PathLike) -> QuantizedMatrix | dict[str, QuantizedMatrix]:
    """Read a file written by :func:`save`: a QuantizedMatrix, or a dict for a mapping file.

    Raises FormatError (a ValueError) naming the problem for truncated, tampered, inconsistent or
    newer-version files. Nothing in the file is executed.
    """
    bundle = load_bundle(path)
    return bundle.objects[SINGLE_NAME] if bundle.container == "single" else bundle.objects


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata`` given to :func:`save`, from a verified file (checksum included)."""
    _, manifest, _ = read_file(path)
    user = manifest.get("user", {})
    if not isinstance(user, dict) or not all(isinstance(v, str) for v in user.values()):
        raise FormatError(f"{path}: invalid user metadata")
    return user


def save_bundle(bundle: Bundle, path: str | os.PathLike) -> None:
    """Write a :class:`Bundle` atomically."""
    for name in bundle.objects:
        if not isinstance(name, str) or not name or name.startswith(PLAIN_PREFIX):
            raise ValueError(f"matrix names must be non-empty strings not starting with {PLAIN_PREFIX!r}: {name!r}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in bundle.metadata.items()):
        raise TypeError("metadata must map str to str")
    tensors: dict[str, np.ndarray] = {}
    for name, q in bundle.objects.items():
        for fname, arr in q.fields().items():
            tensors[f"{name}.{fname}"] = arr
    plain_tensors, plain_info = plain_arrays(bundle.plain)
    tensors.update(plain_tensors)
    manifest = {"container": bundle.container, "user": dict(bundle.metadata), "plain": plain_info,
                "objects": {name: q.info() for name, q in bundle.objects.items()}}
    write_file(path, tensors, manifest, extra_metadata=_summary(bundle.objects.values()))


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read and validate every part of a file written by :func:`save` or :func:`save_bundle`."""
    tensors, manifest, metadata = read_file(path)
    container = manifest.get("container")
    objects = manifest.get("objects")
    plain_info = manifest.get("plain", {})
    user = manifest.get("user", {})
    if container == "slt":
        raise FormatError(f"{path}: this file holds a strong lottery ticket; load it with bqq.slt.load(path, model)")
    if container not in ("single", "mapping") or not isinstance(objects, dict):
        raise FormatError(f"{path}: manifest needs 'container' (single|mapping) and 'objects'")
    if container == "single" and list(objects) != [SINGLE_NAME]:
        raise FormatError(f"{path}: a single-matrix file must hold exactly one object named {SINGLE_NAME!r}")
    if not isinstance(plain_info, dict) or not isinstance(user, dict):
        raise FormatError(f"{path}: manifest 'plain' and 'user' must be objects")
    expected: dict[str, tuple[str, str, tuple[str, tuple[int, ...]]]] = {}
    plans = {}
    for name, info in objects.items():
        cls, grid = _parse_info(name, info, path)
        try:
            specs = cls.field_specs(info, grid)
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{path}: matrix {name!r}: invalid manifest entry ({exc})") from exc
        for fname, spec in specs.items():
            expected[f"{name}.{fname}"] = (name, fname, spec)
        plans[name] = (cls, grid, info)
    plain = read_plain(tensors, plain_info, path)
    _check_tensors({k: v for k, v in tensors.items() if not k.startswith(PLAIN_PREFIX)}, expected, path)
    result = {}
    for name, (cls, grid, info) in plans.items():
        fields = {fname: tensors[key] for key, (owner, fname, _) in expected.items() if owner == name}
        try:
            result[name] = cls.from_fields(info, grid, fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{path}: matrix {name!r}: inconsistent content ({exc})") from exc
    if _summary(result.values()) != {k: metadata.get(k) for k in ("method", "bits", "group_shape")}:
        raise FormatError(f"{path}: header summary (method/bits/group_shape) disagrees with the manifest")
    return Bundle(result, plain, user, container)


def plain_arrays(plain: Mapping[str, torch.Tensor]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Unquantized tensors as file arrays named ``"plain:{name}"`` plus their manifest entry (name -> dtype)."""
    arrays, info = {}, {}
    for name, t in plain.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"plain tensor {name!r} must be a torch.Tensor, got {type(t).__name__}")
        t = t.detach().cpu()
        info[name] = str(t.dtype).removeprefix("torch.")
        arrays[PLAIN_PREFIX + name] = t.to(_PLAIN_STORAGE.get(t.dtype, t.dtype)).contiguous().numpy()
    return arrays, info


def read_plain(tensors: Mapping[str, np.ndarray], plain_info: Any, path) -> dict[str, torch.Tensor]:
    """Inverse of :func:`plain_arrays` on a verified file's tensors; FormatError if anything is off."""
    if not isinstance(plain_info, dict):
        raise FormatError(f"{path}: manifest 'plain' must be an object")
    stored = {k[len(PLAIN_PREFIX):] for k in tensors if k.startswith(PLAIN_PREFIX)}
    if stored != set(plain_info):
        raise FormatError(f"{path}: plain tensors {sorted(stored ^ set(plain_info))[:5]} are missing or undeclared")
    out = {}
    for name, dtype_name in plain_info.items():
        dtype = getattr(torch, dtype_name, None) if isinstance(dtype_name, str) else None
        if not isinstance(dtype, torch.dtype):
            raise FormatError(f"{path}: plain tensor {name!r} has unknown dtype {dtype_name!r}")
        t = torch.from_numpy(np.array(tensors[PLAIN_PREFIX + name]))
        if t.dtype != _PLAIN_STORAGE.get(dtype, dtype):
            raise FormatError(f"{path}: plain tensor {name!r} is stored as {t.dtype}, expected {dtype}")
        out[name] = t.to(dtype)
    return out


def _summary(objects) -> dict[str, str]:
    """Top-level metadata for generic safetensors viewers: shared value, or 'mixed' ('none' if empty)."""
    out = {}
    for key in ("method", "bits", "group_shape"):
        values = {str(q.info()[key]) for q in objects}
        out[key] = values.pop() if len(values) == 1 else ("mixed" if values else "none")
    return out
def _parse_info(name: str, info: Any, path) -> tuple[type[QuantizedMatrix], GroupGrid]:
    if not isinstance(info, dict):
        raise FormatError(f"{path}: matrix {name!r}: manifest entry must be an object")
    try:
        cls = get_method(info["method"])
        shape = tuple(info["shape"])
        rows, cols = tuple(info["row_sizes"]), tuple(info["col_sizes"])
        ints = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (*shape, *rows, *cols))
        if len(shape) != 2 or not ints or not rows or not cols:
            raise ValueError("shape and group sizes must be positive integers")
        if (sum(rows), sum(cols)) != shape:
            raise ValueError(f"group sizes {rows}, {cols} do not tile shape {shape}")
        if info["dtype"] not in TORCH_DTYPES:
            raise ValueError(f"unsupported dtype {info['dtype']!r}")
        grid = GroupGrid(rows, cols)
        if list(grid.group_shape) != info["group_shape"]:
            raise ValueError(f"group_shape {info['group_shape']} disagrees with the group sizes")
        bits = info["bits"]
        kinds = (int,) if cls.integer_bits else (int, float)
        if isinstance(bits, bool) or not isinstance(bits, kinds) or not cls.min_bits <= bits <= cls.max_bits:
            raise ValueError(f"bits {bits!r} is not valid for method {cls.method!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{path}: matrix {name!r}: invalid manifest entry ({exc})") from exc
    return cls, grid


def _check_tensors(tensors: Mapping[str, np.ndarray], expected, path) -> None:
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise FormatError(f"{path}: tensors do not match the manifest: missing {missing[:5]}, "
                          f"unexpected {extra[:5]}")
    for key, (_, _, (dtype, shape)) in expected.items():
        t = tensors[key]
        if t.dtype != np.dtype(dtype) or t.shape != tuple(shape):
            raise FormatError(f"{path}: tensor {key!r} is {t.dtype}{list(t.shape)}, "
                              f"expected {dtype}{list(shape)}")
