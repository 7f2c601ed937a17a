"""`QuantizedMatrix`: the common face of every compressed matrix, whatever the method.

A quantized matrix is a grid of groups (see :mod:`bqq.grouping`). A method declares its stored arrays
once, as :class:`GroupField` entries; the base class derives from them the file fields, their
expected dtypes and shapes, loading with validation, and the assembly of one grouped matrix from
groups solved separately (:meth:`QuantizedMatrix.from_groups`, used by the model pass). The method
itself only solves groups and rebuilds one group from its arrays.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch

from .common import TORCH_DTYPES, config_from_dict, config_version
from .format import checked_planes
from .grouping import GroupGrid

FieldSpec = tuple[str, tuple[int, ...]]  # (numpy dtype name, shape)


class GroupInfo(NamedTuple):
    """What a group's stored shapes depend on: its size, the bits, the settings and its per-group int."""

    rows: int
    cols: int
    bits: Any
    config: Any
    meta: int | None  # the method's per-group integer (BQQ/SVD rank, VQ centroid count), or None


@dataclass(frozen=True)
class GroupField:
    """One stored array of a method, declared once.

    Attributes:
        name: the matrix attribute, and the tensor name in files unless ``key`` is given.
        dtype: numpy dtype name ("uint8", "float32").
        shape: the array's shape for one group.
        per_group: True: the attribute is a list with one array per group, stored as tensors
            ``"<name>.<a>.<b>"``; False: the attribute is an array (G, *shape) of per-group rows,
            stored as one (R, C, *shape) tensor (scalars such as scales and offsets).
        packed_bits: for packed {0,1} planes, the number of bits along the packed last axis (their pad
            bits are checked on load).
        nonnegative: values must be >= 0 (quantizer steps).
        present: whether the method stores the field under these settings (default: always).
        key: the tensor name in files, when it differs from ``name``.
    """

    name: str
    dtype: str
    shape: Callable[[GroupInfo], tuple[int, ...]]
    per_group: bool = True
    packed_bits: Callable[[GroupInfo], int] | None = None
    nonnegative: bool = False
    present: Callable[[Any], bool] | None = None
    key: str | None = None

    @property
    def file_key(self) -> str:
        return self.key or self.name

    def stored(self, config: Any) -> bool:
        return self.present is None or self.present(config)

    def checked(self, arr: np.ndarray, info: GroupInfo, label: str) -> np.ndarray:
        """A private, validated copy of an array read from a file."""
        if self.packed_bits is not None:
            return checked_planes(arr, self.packed_bits(info), label)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError(f"{label} contains NaN or Inf")
        if self.nonnegative and (arr < 0).any():
            raise ValueError(f"{label} must be >= 0")
        return arr.copy()


class QuantizedMatrix(abc.ABC):
    """A compressed (m, n) matrix cut into a grid of groups. Subclasses are registered per method.

    Attributes:
        shape: (m, n) of the original matrix.
        dtype: name of the original floating dtype; ``dequantize()`` returns it.
        grid: the group grid.
        bits: the ``bits`` the matrix was compressed with (its meaning per method: ``bits_meaning``).
        seed: the seed the codes were computed with (group g's randomness derives from (seed, g)).
        config: the method's settings (a versioned dataclass), stored in files so work can be continued.
        One attribute per declared :class:`GroupField`, and ``meta_attr`` (a list of per-group ints) when
        the method has one.
    """

    method: ClassVar[str] = ""
    config_class: ClassVar[type] = type(None)
    min_bits: ClassVar[float] = 1
    max_bits: ClassVar[float] = 8
    integer_bits: ClassVar[bool] = True
    bits_meaning: ClassVar[str] = ""  # what ``bits`` counts for this method, one line (CLI, ``bqq info``)
    group_fields: ClassVar[tuple[GroupField, ...]] = ()
    meta_key: ClassVar[str | None] = None   # manifest key of the per-group int ("ranks", "centroids")
    meta_attr: ClassVar[str | None] = None  # its attribute ("ranks", "counts")
    # Methods that solve the output-aware objective tr((W - Ŵ) H (W - Ŵ)ᵀ) take ``hessian=`` in quantize;
    # H couples the columns of all groups, so with calibration data the model pass gives such a method the
    # whole layer as one job.
    output_aware: ClassVar[bool] = False
    # Methods whose quantize takes ``device=`` (a torch.device from bqq.solver.devices.solver_device, or None
    # for the CPU); the others run on the CPU whatever the device.
    solves_on_devices: ClassVar[bool] = False
    # Methods whose quantize takes ``map_solves=`` (:func:`bqq.solver.stacks.grow_grid`): under H the groups
    # of one column block are independent, so the model pass spreads a calibrated layer's groups over its
    # workers while the column blocks go in order in the main process.
    spreads_groups: ClassVar[bool] = False
    # quantize() solves all groups of a grid in one vectorized call: the model pass gives such a method one job
    # per layer, not one per group.
    batched_groups: ClassVar[bool] = False
    # bqq.api.solve holds BLAS to one thread while quantize() runs: numba's worker threads stay hot between
    # annealing sweeps, and BLAS threads spinning beside them slowed the sweeps many times over (seen when
    # the solver was written; no committed benchmark runs the solve without this limit). A method whose
    # heavy work is BLAS itself (GPTQ) sets False.
    single_threaded_blas: ClassVar[bool] = True

    def __init__(self, shape: tuple[int, int], dtype: str, grid: GroupGrid, bits: float, seed: int, config: Any,
                 **arrays: Any) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = dtype
        self.grid = grid
        self.bits = bits
        self.seed = int(seed)
        self.config = config
        self.first_group = 0  # seeds refer to groups first_group + g (see quantize); 0 once assembled
        self._source: np.ndarray | None = None
        expected = {f.name for f in self.stored_fields(config)}
        if set(arrays) != expected:
            raise TypeError(f"{type(self).__name__} stores {sorted(expected)}, got {sorted(arrays)}")
        for name, value in arrays.items():
            setattr(self, name, value)
        if self.meta_attr:
            setattr(self, self.meta_attr, [self.group_meta(s, bits, config) for s in grid.group_shapes()])

    # --- what a method implements -------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def quantize(cls, w: np.ndarray, grid: GroupGrid, bits: float, seed: int, config: Any,
                 progress: bool | None = None, first_group: int = 0) -> QuantizedMatrix:
        """Compress ``w`` (m, n), float64, finite, on ``grid``.

        ``first_group``: the index of this grid's first group in a larger matrix whose groups are solved
        separately (the model pass solves one group per job): group g's randomness derives from
        (seed, first_group + g), so the assembled groups equal the whole matrix solved at once.
        Methods with ``output_aware`` also take ``hessian``: None, or (n, n) float64 H prepared by
        :func:`bqq.solver.hessian_math.prepare_hessian`, for the whole matrix's columns.
        """

    @abc.abstractmethod
    def dequantize_group(self, index: int) -> np.ndarray:
        """Group ``index`` (row-major) rebuilt as a float64 (m_g, n_g) array."""

    @abc.abstractmethod
    def group_bits(self, index: int) -> int:
        """Information bits stored for group ``index``: codes/binaries plus 32 per FP32 scalar."""

    @classmethod
    def group_meta(cls, shape: tuple[int, int], bits: float, config: Any) -> int | None:
        """The method's per-group integer for a group of ``shape`` (rank, centroid count), if it has one."""
        return None

    def check_content(self) -> None:  # noqa: B027 (optional hook, not abstract)
        """Method-specific checks of arrays read from a file (ValueError); the declared ones are done."""

    # --- settings and file layout, derived from the declarations --------------------------------
    @classmethod
    def stored_fields(cls, config: Any) -> list[GroupField]:
        return [f for f in cls.group_fields if f.stored(config)]

    @classmethod
    def config_from_info(cls, info: dict[str, Any]) -> Any:
        """The settings of a manifest entry; files without ``config_version`` (format v1) are version 1."""
        return config_from_dict(cls.config_class, info["config"], info.get("config_version", 1))

    @classmethod
    def _group_infos(cls, info: dict[str, Any], grid: GroupGrid, config: Any) -> list[GroupInfo]:
        bits = info["bits"]
        metas = [cls.group_meta(s, bits, config) for s in grid.group_shapes()]
        if cls.meta_key is not None:
            expected = np.asarray(metas).reshape(grid.grid_shape).tolist()
            if info[cls.meta_key] != expected:
                raise ValueError(f"{cls.meta_key} {info[cls.meta_key]} disagree with bits={bits} and the settings "
                                 f"(expected {expected})")
        return [GroupInfo(m, n, bits, config, k) for (m, n), k in zip(grid.group_shapes(), metas, strict=True)]

    def fields(self) -> dict[str, np.ndarray]:
        """The stored arrays by tensor name (names are unique within one matrix)."""
        rows, cols = self.grid.grid_shape
        out: dict[str, np.ndarray] = {}
        for f in self.stored_fields(self.config):
            value = getattr(self, f.name)
            if f.per_group:
                out.update({f"{f.file_key}.{a}.{b}": value[g] for g, (a, b, _, _) in enumerate(self.grid.blocks())})
            else:
                out[f.file_key] = value.reshape(rows, cols, *value.shape[1:])
        return out

    @classmethod
    def field_specs(cls, info: dict[str, Any], grid: GroupGrid) -> dict[str, FieldSpec]:
        """Expected dtype and shape of every tensor, derived from the manifest entry ``info``."""
        config = cls.config_from_info(info)
        infos = cls._group_infos(info, grid, config)
        specs: dict[str, FieldSpec] = {}
        for f in cls.stored_fields(config):
            if f.per_group:
                for (a, b, _, _), gi in zip(grid.blocks(), infos, strict=True):
                    specs[f"{f.file_key}.{a}.{b}"] = (f.dtype, f.shape(gi))
            else:
                specs[f.file_key] = (f.dtype, (*grid.grid_shape, *f.shape(infos[0])))
        return specs

    @classmethod
    def from_fields(cls, info: dict[str, Any], grid: GroupGrid, fields: dict[str, np.ndarray]) -> QuantizedMatrix:
        """Rebuild from tensors of the shapes :meth:`field_specs` gives; ValueError on bad content."""
        config = cls.config_from_info(info)
        infos = cls._group_infos(info, grid, config)
        arrays: dict[str, Any] = {}
        for f in cls.stored_fields(config):
            if f.per_group:
                arrays[f.name] = [f.checked(fields[f"{f.file_key}.{a}.{b}"], gi, f"{f.name} of group ({a}, {b})")
                                  for (a, b, _, _), gi in zip(grid.blocks(), infos, strict=True)]
            else:
                stored = fields[f.file_key]
                rows = stored.reshape(len(grid), *stored.shape[2:])
                arrays[f.name] = f.checked(rows, infos[0], f.name)
        q = cls(tuple(info["shape"]), info["dtype"], grid, info["bits"], info["seed"], config, **arrays)
        q.check_content()
        return q

    @classmethod
    def from_groups(cls, grid: GroupGrid, groups: Sequence[QuantizedMatrix], seed: int | None = None
                    ) -> QuantizedMatrix:
        """One grouped matrix on ``grid`` from single-group matrices (row-major), e.g. solved one per job.

        All groups must share method, bits, settings and dtype. ``seed``: the grouped matrix's seed
        (default: the first group's).
        """
        if len(groups) != len(grid):
            raise ValueError(f"{len(groups)} groups for a grid of {len(grid)}")
        first = groups[0]
        for q, shape in zip(groups, grid.group_shapes(), strict=True):
            if type(q) is not cls or len(q.grid) != 1 or q.shape != shape:
                raise ValueError(f"expected single-group {cls.__name__} of shape {shape}, got {q!r}")
            if (q.bits, q.config, q.dtype) != (first.bits, first.config, first.dtype):
                raise ValueError("groups of one matrix must share bits, settings and dtype")
        arrays = {f.name: ([getattr(q, f.name)[0] for q in groups] if f.per_group
                           else np.concatenate([getattr(q, f.name) for q in groups]))
                  for f in cls.stored_fields(first.config)}
        return cls(grid.shape, first.dtype, grid, first.bits, first.seed if seed is None else seed, first.config,
                   **arrays)

    # --- shared behaviour ---------------------------------------------------------------------
    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The approximation of the original matrix, shape (m, n), in ``dtype`` (default: the original one)."""
        return torch.from_numpy(self._dequantize64()).to(dtype or TORCH_DTYPES[self.dtype])

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

    def kernel_layout(self) -> Any:
        """The packed arrays a matmul kernel reads (:func:`bqq_kernels.bqq_linear` takes them: a
        ``BQQLayout`` or ``PlaneLayout``), or None for methods without a kernel, whose layers rebuild
        their weight."""
        return None

    def group_scalars(self, index: int) -> np.ndarray:
        """The FP32 scalars group ``index`` is affine in, given its stored codes (float64 vector).

        Methods whose codes are binary (BQQ, BCQ) expose them so calibration can refit them with the
        binaries fixed; the default is none.
        """
        return np.zeros(0)

    def set_group_scalars(self, index: int, values: np.ndarray) -> None:
        """Replace the scalars :meth:`group_scalars` returns for group ``index`` (same order and size)."""
        if np.asarray(values).size:
            raise ValueError(f"method {self.method!r} has no refittable scalars")

    def release_source(self) -> None:
        """Drop the reference to the original matrix kept for :meth:`extend`-style continuation."""
        self._source = None

    def info(self) -> dict[str, Any]:
        """The manifest entry that describes this matrix in a file."""
        out = {
            "method": self.method,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "bits": self.bits,
            "group_shape": list(self.group_shape),
            "row_sizes": list(self.grid.row_sizes),
            "col_sizes": list(self.grid.col_sizes),
            "seed": self.seed,
            "config": dataclasses.asdict(self.config),
            "config_version": config_version(self.config_class),
        }
        if self.meta_key is not None:
            out[self.meta_key] = np.asarray(getattr(self, self.meta_attr)).reshape(self.grid.grid_shape).tolist()
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(method={self.method!r}, shape={self.shape}, bits={self.bits}, "
                f"group_shape={self.group_shape}, bits_per_weight={self.bits_per_weight:.4f}, "
                f"nbytes={self.nbytes})")
