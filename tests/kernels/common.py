"""Random kernel layouts shared by the CPU, GPU and op tests of bqq_kernels."""

from __future__ import annotations

import numpy as np

import bqq_kernels as kernels


def random_layout(row_sizes, col_sizes, stacks: int, seed: int = 0) -> kernels.BQQLayout:
    """A BQQ layout of random bits and scalars on the grid given by the part sizes; every group gets its own
    rank."""
    rng = np.random.default_rng(seed)

    def packed(*shape):
        return np.packbits(rng.integers(0, 2, shape, dtype=np.uint8), axis=-1, bitorder="little")

    groups = []
    for m in row_sizes:
        for n in col_sizes:
            rank = int(rng.integers(1, min(m, n) + 1))
            scales = (rng.standard_normal((stacks, 3)) * [1.0, 0.3, 0.3]).astype(np.float32)
            groups.append(kernels.BQQGroupFactors(packed(stacks, m, rank), packed(stacks, rank, n), scales,
                                                  float(rng.standard_normal())))
    return kernels.build_layout(groups, row_sizes, col_sizes)


def random_plane_layout(row_sizes, col_sizes, planes: int, seed: int = 0) -> kernels.PlaneLayout:
    """A bit-plane layout of random planes, coefficients and offsets on the grid given by the part sizes."""
    rng = np.random.default_rng(seed)
    groups = [np.packbits(rng.integers(0, 2, (planes, m, n), dtype=np.uint8), axis=-1, bitorder="little")
              for m in row_sizes for n in col_sizes]
    count = len(groups)
    return kernels.build_plane_layout((sum(row_sizes), sum(col_sizes)), row_sizes, col_sizes, groups,
                                      rng.standard_normal((count, planes)), rng.standard_normal(count))
