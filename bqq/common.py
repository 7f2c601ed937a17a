"""What several bqq packages share: input validators, versioned configs, progress bars, module surgery.

This module imports nothing else from bqq, so every package (the methods, ``ptq``, ``slt``, ``gnn``)
can use it without import cycles.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


# --- validators ---------------------------------------------------------------------------------
def is_number(value: Any) -> bool:
    """A finite real number (bools excluded)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value)


def is_int(value: Any) -> bool:
    """An integer (bools excluded)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_seed(seed: Any) -> None:
    """ValueError unless ``seed`` is an integer in [0, 2^63)."""
    if not is_int(seed) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be a non-negative integer below 2**63, got {seed!r}")


def dtype_name(dtype: torch.dtype | np.dtype) -> str:
    """'float32' etc. for a floating torch or numpy dtype."""
    name = str(dtype).removeprefix("torch.")
    if name not in TORCH_DTYPES:
        raise ValueError(f"unsupported dtype {dtype}; expected one of {sorted(TORCH_DTYPES)}")
    return name


def as_float_matrix(w: torch.Tensor | np.ndarray) -> tuple[np.ndarray, str]:
    """Validate a user matrix (m, n): floating, 2-D, non-empty, finite.

    Returns it as a C-contiguous float64 numpy array plus the name of its dtype.
    """
    if isinstance(w, torch.Tensor):
        if not w.is_floating_point():
            raise ValueError(f"matrix must have a floating dtype, got {w.dtype}")
        dtype = dtype_name(w.dtype)
        arr = w.detach().to("cpu", torch.float64).numpy()
    elif isinstance(w, np.ndarray):
        if w.dtype.kind != "f":
            raise ValueError(f"matrix must have a floating dtype, got {w.dtype}")
        dtype = dtype_name(w.dtype)
        arr = w.astype(np.float64, copy=False)
    else:
        raise TypeError(f"expected a torch.Tensor or numpy.ndarray, got {type(w).__name__}")
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"matrix is empty (shape {tuple(arr.shape)})")
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.argwhere(~finite)
        nan = int(np.isnan(arr).sum())
        raise ValueError(f"matrix has {nan} NaN and {bad.shape[0] - nan} Inf entries "
                         f"(first at index {tuple(int(v) for v in bad[0])})")
    return np.ascontiguousarray(arr), dtype


def hessian_matrix(h: torch.Tensor | np.ndarray, n: int) -> np.ndarray:
    """Validate an input second moment H = Σ x xᵀ for a matrix with ``n`` columns: floating, (n, n),
    finite. Returns it as float64 numpy."""
    if isinstance(h, (torch.Tensor, np.ndarray)) and h.ndim == 2 and tuple(h.shape) != (n, n):
        raise ValueError(f"hessian must be ({n}, {n}) for a matrix with {n} columns, got {tuple(h.shape)}")
    try:
        arr, _ = as_float_matrix(h)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"hessian: {exc}") from None
    if arr.shape != (n, n):
        raise ValueError(f"hessian must be ({n}, {n}) for a matrix with {n} columns, got {arr.shape}")
    return arr


# --- versioned config dataclasses -------------------------------------------------------------------
def check_settings(config: Any, checks: Mapping[str, bool]) -> None:
    """Raise one ValueError naming every field of ``config`` whose check is False (for ``__post_init__``)."""
    bad = [f"{name}={getattr(config, name)!r}" for name, ok in checks.items() if not ok]
    if bad:
        cls = type(config)
        raise ValueError(f"invalid {cls.__name__.removesuffix('Config')} settings: {', '.join(bad)} "
                         f"(see {cls.__module__}.{cls.__name__})")


def config_version(cls: type) -> int:
    """The ``VERSION`` a config dataclass declares (every config class has one; it starts at 1)."""
    version = getattr(cls, "VERSION", None)
    if not is_int(version) or version < 1:
        raise TypeError(f"config class {cls.__name__} declares no VERSION")
    return int(version)


def config_from_dict(cls: type, data: Any, version: Any = 1) -> Any:
    """Rebuild a config dataclass written with ``version``; ValueError for a newer version or unknown fields.

    A field missing from an older config takes the default of that version where the class records one
    (``DEFAULTS_BEFORE = {last version: {field: value}}``), else the current default.
    """
    known = config_version(cls)
    if not is_int(version) or version < 1:
        raise ValueError(f"{cls.__name__} version {version!r} is not a positive integer")
    if version > known:
        raise ValueError(f"{cls.__name__} version {version} is newer than this bqq reads ({known}); upgrade bqq")
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
    unknown = unknown_fields(cls, data)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}")
    then = {k: v for last, defaults in sorted(getattr(cls, "DEFAULTS_BEFORE", {}).items(), reverse=True)
            if version <= last for k, v in defaults.items()}
    return cls(**{**then, **data})


def make_config(cls: type, opts: Mapping[str, Any], owner: str) -> Any:
    """``cls(**opts)``; TypeError listing the valid names when an option is unknown to ``owner``."""
    unknown = unknown_fields(cls, opts)
    if unknown:
        valid = sorted(f.name for f in dataclasses.fields(cls))
        raise TypeError(f"unknown option(s) {unknown} for {owner}; valid: {valid}")
    return cls(**opts)


def unknown_fields(cls: type, names: Iterable[str]) -> list[str]:
    """The ``names`` that are not fields of dataclass ``cls``, sorted."""
    return sorted(set(names) - {f.name for f in dataclasses.fields(cls)})


# --- progress -------------------------------------------------------------------------------------
def progress_bar(iterable: Iterable[Any] | None = None, *, progress: bool | None, **kwargs: Any) -> tqdm:
    """tqdm bar; ``progress`` None shows it only on a terminal, True/False force it on/off."""
    return tqdm(iterable, disable=None if progress is None else not progress, **kwargs)


# --- module surgery and name patterns -------------------------------------------------------------
def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at the qualified ``name`` inside ``model`` (same training mode); returns the old module."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    new.train(old.training)
    setattr(parent, child, new)
    return old


def as_patterns(value: str | Sequence[str] | None, label: str) -> tuple[str, ...]:
    """None, one fnmatch pattern or a list of them, as a tuple; ValueError naming ``label`` otherwise."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"{label} must be a pattern or a list of fnmatch patterns, got {value!r}")


def matches_any(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether module ``name`` matches one of the fnmatch ``patterns`` (case-sensitive)."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)
