"""`QuantizedMatrix`: the common face of every compressed matrix, whatever the method.

A quantized matrix is a grid of groups (see :mod:`bqq.grouping`); each method stores a few named
arrays ("fields") and knows how to rebuild a group from them. The base class turns that into
``dequantize()``, the bit accounting, and the (de)serialization hooks used by :mod:`bqq.io`.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from .grouping import GroupGrid

_TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
FieldSpec = tuple[str, tuple[int, ...]]  # (numpy dtype name, shape)


def dtype_name(dtype: torch.dtype | np.dtype) -> str:
    """'float32' etc. for a floating torch or numpy dtype."""
    name = str(dtype).removeprefix("torch.")
    if name not in _TORCH_DTYPES:
        raise ValueError(f"unsupported dtype {dtype}; expected one of {sorted(_TORCH_DTYPES)}")
    return name


def progress_bar(iterable=None, *, progress: bool | None, **kwargs: Any) -> tqdm:
    """tqdm bar; ``progress`` None shows it only on a terminal, True/False force it on/off."""
    return tqdm(iterable, disable=None if progress is None else not progress, **kwargs)


def grid_ints(values: Any, grid: GroupGrid, name: str) -> list[int]:
    """A per-group manifest entry given as an (R, C) nested list of positive ints, flattened row-major."""
    arr = np.asarray(values)
    if arr.shape != grid.grid_shape or arr.dtype.kind != "i" or (arr < 1).any():
        raise ValueError(f"{name} must be a {grid.grid_shape} grid of positive integers")
    return [int(v) for v in arr.reshape(-1)]


class QuantizedMatrix(abc.ABC):
    """A compressed (m, n) matrix. Subclasses are registered per method in :mod:`bqq.methods`.

    Attributes:
        shape: (m, n) of the original matrix.
        dtype: name of the original floating dtype; ``dequantize()`` returns it.
        grid: the group grid.
        bits: the nominal bits per weight the user asked for (for BQQ: the number of stacks p).
        seed: the seed the codes were computed with.
        config: the method's settings (a dataclass), stored in files so that work can be continued.
    """

    method: ClassVar[str] = ""
    config_class: ClassVar[type] = type(None)
    min_bits: ClassVar[float] = 1
    max_bits: ClassVar[float] = 8
    integer_bits: ClassVar[bool] = True

    def __init__(self, shape: tuple[int, int], dtype: str, grid: GroupGrid, bits: float, seed: int,
                 config: Any) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = dtype
        self.grid = grid
        self.bits = bits
        self.seed = int(seed)
        self.config = config
        self._source: np.ndarray | None = None

    # --- what a method implements -------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def quantize(cls, w: np.ndarray, grid: GroupGrid, bits: float, seed: int, config: Any,
                 progress: bool | None = None) -> QuantizedMatrix:
        """Compress ``w`` (m, n), float64, finite, on ``grid``."""

    @abc.abstractmethod
    def dequantize_group(self, index: int) -> np.ndarray:
        """Group ``index`` (row-major) rebuilt as a float64 (m_g, n_g) array."""

    @abc.abstractmethod
    def group_bits(self, index: int) -> int:
        """Information bits stored for group ``index``: codes/binaries plus 32 per FP32 scalar."""

    @abc.abstractmethod
    def fields(self) -> dict[str, np.ndarray]:
        """The stored arrays by field name (names are unique within one matrix)."""

    @classmethod
    @abc.abstractmethod
    def field_specs(cls, info: dict[str, Any], grid: GroupGrid) -> dict[str, FieldSpec]:
        """Expected dtype and shape of every field, derived from the manifest entry ``info``."""

    @classmethod
    @abc.abstractmethod
    def from_fields(cls, info: dict[str, Any], grid: GroupGrid, fields: dict[str, np.ndarray]) -> QuantizedMatrix:
        """Rebuild from validated fields; raise ValueError on inconsistent content."""

    def extra_info(self) -> dict[str, Any]:
        """Method-specific manifest entries (JSON-able)."""
        return {}

    # --- shared behaviour ---------------------------------------------------------------------
    def dequantize(self) -> torch.Tensor:
        """The approximation of the original matrix, shape (m, n), original dtype."""
        groups = [self.dequantize_group(i) for i in range(len(self.grid))]
        return torch.from_numpy(self.grid.merge(groups)).to(_TORCH_DTYPES[self.dtype])

    def _dequantize64(self) -> np.ndarray:
        return self.grid.merge([self.dequantize_group(i) for i in range(len(self.grid))])

    @property
    def total_bits(self) -> int:
        """Information bits of all groups (the bit accounting of the reference code)."""
        return sum(self.group_bits(i) for i in range(len(self.grid)))

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per original weight, counting every binary, code and FP32 scalar."""
        return self.total_bits / (self.shape[0] * self.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of all stored arrays (packing pads each packed row to whole bytes)."""
        return int(sum(a.nbytes for a in self.fields().values()))

    @property
    def group_shape(self) -> tuple[int, int]:
        return self.grid.group_shape

    def scalars(self) -> np.ndarray:
        """The FP32 scalars that the rebuilt matrix is affine in, given the stored codes (float64 vector).

        Methods whose codes are binary (BQQ, BCQ) expose them so calibration can refit them with the
        binaries fixed; the default is none.
        """
        return np.zeros(0)

    def set_scalars(self, values: np.ndarray) -> None:
        """Replace the scalars returned by :meth:`scalars` (same order and size)."""
        if np.asarray(values).size:
            raise ValueError(f"method {self.method!r} has no refittable scalars")

    def release_source(self) -> None:
        """Drop the reference to the original matrix kept for :meth:`extend`-style continuation."""
        self._source = None

    def info(self) -> dict[str, Any]:
        """The manifest entry that describes this matrix in a file."""
        return {
            "method": self.method,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "bits": self.bits,
            "group_shape": list(self.group_shape),
            "row_sizes": list(self.grid.row_sizes),
            "col_sizes": list(self.grid.col_sizes),
            "seed": self.seed,
            "config": dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else {},
            **self.extra_info(),
        }

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(method={self.method!r}, shape={self.shape}, bits={self.bits}, "
                f"group_shape={self.group_shape}, bits_per_weight={self.bits_per_weight:.4f}, "
                f"nbytes={self.nbytes})")
