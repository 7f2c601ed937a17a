"""`bqq.save` / `bqq.load`: quantized matrices to and from the packed safetensors format."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .format import FormatError, read_file, write_file
from .grouping import GroupGrid
from .methods import get_method
from .quantized import _TORCH_DTYPES, QuantizedMatrix

SINGLE_NAME = "matrix"


def save(obj: QuantizedMatrix | Mapping[str, QuantizedMatrix], path: str | os.PathLike, *,
         metadata: Mapping[str, str] | None = None) -> None:
    """Write one quantized matrix, or a name -> matrix mapping, to ``path`` (safetensors).

    Tensor ``"{name}.{field}"`` holds field ``field`` of matrix ``name`` (``"matrix"`` for a single one).
    ``metadata`` (str -> str) is stored in the manifest under "user"; read it with :func:`read_metadata`.
    The write is atomic: an existing file is replaced only once the new one is complete.
    """
    if isinstance(obj, QuantizedMatrix):
        objects, container = {SINGLE_NAME: obj}, "single"
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, QuantizedMatrix) for v in obj.values()):
        objects, container = dict(obj), "mapping"
        for name in objects:
            if not isinstance(name, str) or not name:
                raise ValueError(f"matrix names must be non-empty strings, got {name!r}")
    else:
        raise TypeError("save() takes a QuantizedMatrix or a non-empty mapping of name -> QuantizedMatrix")
    tensors: dict[str, np.ndarray] = {}
    for name, q in objects.items():
        for field, arr in q.fields().items():
            tensors[f"{name}.{field}"] = arr
    user = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in user.items()):
        raise TypeError("metadata must map str to str")
    manifest = {"container": container, "objects": {name: q.info() for name, q in objects.items()}, "user": user}
    write_file(path, tensors, manifest, extra_metadata=_summary(objects.values()))


def load(path: str | os.PathLike) -> QuantizedMatrix | dict[str, QuantizedMatrix]:
    """Read a file written by :func:`save`, validating every tensor against the manifest.

    Raises FormatError (a ValueError) naming the problem for truncated, tampered, inconsistent or
    newer-version files. Nothing in the file is executed.
    """
    tensors, manifest, metadata = read_file(path)
    container = manifest.get("container")
    objects = manifest.get("objects")
    if container not in ("single", "mapping") or not isinstance(objects, dict) or not objects:
        raise FormatError(f"{path}: manifest needs 'container' (single|mapping) and a non-empty 'objects'")
    if container == "single" and list(objects) != [SINGLE_NAME]:
        raise FormatError(f"{path}: a single-matrix file must hold exactly one object named {SINGLE_NAME!r}")
    expected: dict[str, tuple[str, str, tuple[str, tuple[int, ...]]]] = {}
    plans = {}
    for name, info in objects.items():
        cls, grid = _parse_info(name, info, path)
        try:
            specs = cls.field_specs(info, grid)
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{path}: matrix {name!r}: invalid manifest entry ({exc})") from exc
        for field, spec in specs.items():
            expected[f"{name}.{field}"] = (name, field, spec)
        plans[name] = (cls, grid, info)
    _check_tensors(tensors, expected, path)
    result = {}
    for name, (cls, grid, info) in plans.items():
        fields = {field: tensors[key] for key, (owner, field, _) in expected.items() if owner == name}
        try:
            q = cls.from_fields(info, grid, fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{path}: matrix {name!r}: inconsistent content ({exc})") from exc
        result[name] = q
    if _summary(result.values()) != {k: metadata.get(k) for k in ("method", "bits", "group_shape")}:
        raise FormatError(f"{path}: header summary (method/bits/group_shape) disagrees with the manifest")
    return result[SINGLE_NAME] if container == "single" else result


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata`` given to :func:`save`, from a verified file (checksum included)."""
    _, manifest, _ = read_file(path)
    user = manifest.get("user", {})
    if not isinstance(user, dict) or not all(isinstance(v, str) for v in user.values()):
        raise FormatError(f"{path}: invalid user metadata")
    return user


def _summary(objects) -> dict[str, str]:
    """Top-level metadata for generic safetensors viewers: shared value, or 'mixed'."""
    out = {}
    for key in ("method", "bits", "group_shape"):
        values = {str(q.info()[key]) for q in objects}
        out[key] = values.pop() if len(values) == 1 else "mixed"
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
        if info["dtype"] not in _TORCH_DTYPES:
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
