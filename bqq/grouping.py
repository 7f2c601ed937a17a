"""Cutting a matrix into groups that each get their own scalars.

A dimension of length ``d`` with group length ``g`` is cut into ``ceil(d / g)`` contiguous parts whose
lengths differ by at most one (balanced), so ``d = 385, g = 384`` gives 193 + 192 rather than 384 + 1.
When ``g`` divides ``d`` every part is exactly ``g``. Groups are numbered row-major over the grid.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


def balanced_splits(length: int, group: int) -> tuple[int, ...]:
    """Part lengths of a dimension of ``length`` cut into parts of at most ``group``."""
    if length < 1 or group < 1:
        raise ValueError(f"length and group must be >= 1, got {length} and {group}")
    parts = -(-length // group)
    base, extra = divmod(length, parts)
    return tuple(base + 1 if i < extra else base for i in range(parts))


def parse_group_shape(group_size: int | Sequence[int] | None, shape: tuple[int, int]) -> tuple[int, int]:
    """Normalize ``group_size`` (None, an int for square groups, or (rows, cols)) to a (rows, cols) pair.

    None means one group covering the whole matrix. Group sides larger than the matrix are clipped.
    """
    m, n = shape
    if group_size is None:
        return m, n
    if isinstance(group_size, (int, np.integer)) and not isinstance(group_size, bool):
        rows = cols = int(group_size)
    elif isinstance(group_size, Sequence) and not isinstance(group_size, str) and len(group_size) == 2:
        rows, cols = group_size
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (rows, cols)):
            raise ValueError(f"group_size entries must be integers, got {group_size!r}")
        rows, cols = int(rows), int(cols)
    else:
        raise ValueError(f"group_size must be None, an int or a (rows, cols) pair, got {group_size!r}")
    if rows < 1 or cols < 1:
        raise ValueError(f"group_size must be positive, got {group_size!r}")
    return min(rows, m), min(cols, n)


@dataclass(frozen=True)
class GroupGrid:
    """The grid of groups of an (m, n) matrix: row part lengths and column part lengths."""

    row_sizes: tuple[int, ...]
    col_sizes: tuple[int, ...]

    @classmethod
    def build(cls, shape: tuple[int, int], group_shape: tuple[int, int]) -> GroupGrid:
        return cls(balanced_splits(shape[0], group_shape[0]), balanced_splits(shape[1], group_shape[1]))

    @property
    def shape(self) -> tuple[int, int]:
        return sum(self.row_sizes), sum(self.col_sizes)

    @property
    def grid_shape(self) -> tuple[int, int]:
        return len(self.row_sizes), len(self.col_sizes)

    @property
    def group_shape(self) -> tuple[int, int]:
        """The largest group, i.e. the requested group shape clipped to the matrix."""
        return max(self.row_sizes), max(self.col_sizes)

    def __len__(self) -> int:
        return len(self.row_sizes) * len(self.col_sizes)

    def blocks(self) -> Iterator[tuple[int, int, slice, slice]]:
        """Yield (grid row, grid col, row slice, col slice) in row-major group order."""
        r0 = 0
        for a, rows in enumerate(self.row_sizes):
            c0 = 0
            for b, cols in enumerate(self.col_sizes):
                yield a, b, slice(r0, r0 + rows), slice(c0, c0 + cols)
                c0 += cols
            r0 += rows

    def group_shapes(self) -> list[tuple[int, int]]:
        return [(rs.stop - rs.start, cs.stop - cs.start) for _, _, rs, cs in self.blocks()]

    def split(self, w: np.ndarray) -> list[np.ndarray]:
        """Groups of ``w`` (m, n) as contiguous arrays, row-major."""
        return [np.ascontiguousarray(w[rs, cs]) for _, _, rs, cs in self.blocks()]

    def merge(self, groups: Sequence[np.ndarray], dtype: np.dtype | type = np.float64) -> np.ndarray:
        """Inverse of :meth:`split`."""
        out = np.empty(self.shape, dtype=dtype)
        for g, (_, _, rs, cs) in zip(groups, self.blocks(), strict=True):
            out[rs, cs] = g
        return out
