"""BQQ: W ≈ Σ_i (r_i Y_i Z_i + s_i Y_i 1 + t_i 1 Z_i) + u per group, Y_i, Z_i binary.

Stacks are added greedily: each new stack is solved on the current residual of every group
(:mod:`bqq.solver`), then all 3p + 1 scalars of the group are refitted exactly by least squares on
the binaries. ``compress(w, bits=p)`` is literally p calls of the stack step, so
``compress(w, bits=2).extend(2)`` equals ``compress(w, bits=4)`` bit for bit.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import bqq_kernels
import numpy as np

from .. import solver
from ..format import checked_planes, pack_bits, packed_length, unpack_bits
from ..grouping import GroupGrid
from ..quantized import FieldSpec, QuantizedMatrix, grid_ints, progress_bar
from . import register_method


@dataclass(frozen=True)
class BQQConfig:
    """Settings of the BQQ solver (all optional; pass them as ``bqq.compress(..., name=value)``).

    Attributes:
        rank_scale: l = round(rank_scale · m n / (m + n)) per group (the paper's l_scale).
        sweeps: annealing sweeps per stack; None picks ``auto_sweeps`` (more for small groups).
        t_start, t_end: annealing temperatures as fractions of the critical temperature.
        alpha_scale: fixed ±1 scale during annealing, in units of rms(residual)/sqrt(l).
        aspect_exponent: per-side temperature split for non-square groups (see bqq.solver).
        polish_rounds: maximum rounds of exact bit-flip descent after annealing.
        restarts: independent anneals per group and stack; the best is kept.
        batch_groups: groups of one shape solved together (bounds memory: ~5 m n · 4 bytes each).
    """

    rank_scale: float = 1.0
    sweeps: int | None = None
    t_start: float = 0.95
    t_end: float = 0.18
    alpha_scale: float = 0.9
    aspect_exponent: float = 0.7
    polish_rounds: int = 50
    restarts: int = 1
    batch_groups: int = 64

    def __post_init__(self) -> None:
        checks = {
            "rank_scale": _is_number(self.rank_scale) and 0 < self.rank_scale <= 16,
            "sweeps": self.sweeps is None or (_is_int(self.sweeps) and 1 <= self.sweeps <= 1_000_000),
            "t_start": _is_number(self.t_start) and self.t_start > 0,
            "t_end": _is_number(self.t_end) and 0 < self.t_end <= self.t_start,
            "alpha_scale": _is_number(self.alpha_scale) and self.alpha_scale > 0,
            "aspect_exponent": _is_number(self.aspect_exponent) and 0 <= self.aspect_exponent <= 2,
            "polish_rounds": _is_int(self.polish_rounds) and self.polish_rounds >= 0,
            "restarts": _is_int(self.restarts) and 1 <= self.restarts <= 64,
            "batch_groups": _is_int(self.batch_groups) and self.batch_groups >= 1,
        }
        bad = [f"{k}={getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid BQQ settings: {', '.join(bad)} (see bqq.methods.bqq.BQQConfig)")


SWEEP_BUDGET = 1.4e10  # (m + n) · l² · sweeps: about 500 sweeps for a 384×384 group


def auto_sweeps(shape: tuple[int, int], rank: int) -> int:
    """Default annealing length: the same work per stack for every group shape, within [300, 6000].

    A sweep costs about (m + n)·l² multiply-adds. Small groups are cheap and need long schedules to
    reach their best error; large ones self-average. The budget keeps a 384×384 stack near 2-3 s on
    two cores and gives a 128×128 stack 6000 sweeps (about 2 s).
    """
    work = (shape[0] + shape[1]) * rank * rank
    return int(min(6000, max(300, round(SWEEP_BUDGET / work))))


def inner_dim(shape: tuple[int, int], rank_scale: float) -> int:
    """l = round(rank_scale · m n / (m + n)), at least 1."""
    m, n = shape
    return max(1, round(rank_scale * m * n / (m + n)))


@register_method("bqq")
class BQQMatrix(QuantizedMatrix):
    """A BQQ-compressed matrix: per group p stacks of packed binaries and FP32 scalars.

    In memory (and on disk, see docs/format.md), for group g of shape (m_g, n_g) with inner dim l_g:
    ``y[g]`` uint8 (p, m_g, ceil(l_g/8)), ``z[g]`` uint8 (p, l_g, ceil(n_g/8)) (packed along the last
    axis), ``scales`` float32 (G, p, 3) rows (r, s, t), ``offset`` float32 (G,) u.
    """

    config_class = BQQConfig
    min_bits = 1
    max_bits = 16

    def __init__(self, shape, dtype, grid: GroupGrid, seed: int, config: BQQConfig, ranks: list[int],
                 y: list[np.ndarray], z: list[np.ndarray], scales: np.ndarray, offset: np.ndarray) -> None:
        super().__init__(shape, dtype, grid, scales.shape[1], seed, config)
        self.ranks = ranks
        self.y = y
        self.z = z
        self.scales = scales
        self.offset = offset

    @property
    def stacks(self) -> int:
        """Number of stacks p (the "pseudo bits")."""
        return self.scales.shape[1]

    # --- building ---------------------------------------------------------------------------
    @classmethod
    def quantize(cls, w, grid, bits, seed, config, progress=None) -> BQQMatrix:
        shapes = grid.group_shapes()
        ranks = [inner_dim(s, config.rank_scale) for s in shapes]
        empty = cls(w.shape, "float64", grid, seed, config, ranks,
                    [np.zeros((0, m, packed_length(r)), np.uint8) for (m, _), r in zip(shapes, ranks, strict=True)],
                    [np.zeros((0, r, packed_length(n)), np.uint8) for (_, n), r in zip(shapes, ranks, strict=True)],
                    np.zeros((len(grid), 0, 3), np.float32), np.zeros(len(grid), np.float32))
        empty._add_stacks(w, int(bits), progress)
        return empty

    def extend(self, extra_bits: int, w: Any = None, progress: bool | None = None) -> BQQMatrix:
        """Add ``extra_bits`` stacks on the current residual, keeping every earlier binary.

        Args:
            extra_bits: stacks to add (>= 1; the total stays <= 16).
            w: the original matrix; needed when this matrix was loaded from a file (the one it was
                compressed from is kept in memory otherwise).

        Returns:
            self, extended in place. All scalars are refitted, so the error never increases.
        """
        from ..api import as_float_matrix

        if isinstance(extra_bits, bool) or not isinstance(extra_bits, (int, np.integer)) or extra_bits < 1:
            raise ValueError(f"extra_bits must be a positive integer, got {extra_bits!r}")
        if self.stacks + extra_bits > self.max_bits:
            raise ValueError(f"{self.stacks} + {extra_bits} stacks exceed the maximum of {self.max_bits}")
        if w is not None:
            source, _ = as_float_matrix(w)
            if source.shape != self.shape:
                raise ValueError(f"w has shape {source.shape}, this matrix was compressed from {self.shape}")
        elif self._source is not None:
            source = self._source
        else:
            raise ValueError("extend() needs the original matrix: this one was loaded from a file or "
                             "released its source; call q.extend(bits, w=original)")
        self._add_stacks(source, int(extra_bits), progress)
        return self

    def _add_stacks(self, w: np.ndarray, count: int, progress: bool | None) -> None:
        targets = self.grid.split(w)
        by_shape: dict[tuple[int, int, int], list[int]] = defaultdict(list)
        for g, (shape, rank) in enumerate(zip(self.grid.group_shapes(), self.ranks, strict=True)):
            by_shape[(*shape, rank)].append(g)
        batches = [(key[2], idx[i:i + self.config.batch_groups]) for key, idx in by_shape.items()
                   for i in range(0, len(idx), self.config.batch_groups)]
        with progress_bar(total=count * len(self.grid), progress=progress, unit="group",
                          desc=f"bqq {self.shape[0]}x{self.shape[1]}") as bar:
            for _ in range(count):
                stack = self.stacks
                residuals = [t - self.dequantize_group(g) for g, t in enumerate(targets)]
                new_y: dict[int, np.ndarray] = {}
                new_z: dict[int, np.ndarray] = {}
                for rank, idx in batches:
                    ys, zs = self._solve_batch([residuals[g] for g in idx], rank, stack, idx)
                    new_y.update(zip(idx, ys, strict=True))
                    new_z.update(zip(idx, zs, strict=True))
                    bar.update(len(idx))
                self._append_stack(targets, new_y, new_z)

    def _solve_batch(self, residuals: list[np.ndarray], rank: int, stack: int, groups: list[int]):
        cfg = self.config
        restarts = cfg.restarts
        x = np.repeat(np.stack(residuals), restarts, axis=0)
        seeds = [(self.seed, stack, g, r) for g in groups for r in range(restarts)]
        u, v = solver.solve_sign_factors(
            x, rank, seeds, sweeps=cfg.sweeps or auto_sweeps(x.shape[1:], rank), t_start=cfg.t_start, t_end=cfg.t_end,
            alpha_scale=cfg.alpha_scale, polish_rounds=cfg.polish_rounds, aspect_exponent=cfg.aspect_exponent)
        best = solver.sign_fit_error(x, u, v).reshape(len(groups), restarts).argmin(axis=1)
        pick = np.arange(len(groups)) * restarts + best
        ys = [(u[k] > 0).astype(np.uint8) for k in pick]
        zs = [np.ascontiguousarray((v[k] > 0).astype(np.uint8).T) for k in pick]
        return ys, zs

    def _append_stack(self, targets, new_y, new_z) -> None:
        scales = np.empty((len(self.grid), self.stacks + 1, 3), np.float32)
        offset = np.empty(len(self.grid), np.float32)
        for g, target in enumerate(targets):
            ys = np.concatenate([self._unpacked_y(g), new_y[g][None]])
            zs = np.concatenate([self._unpacked_z(g), new_z[g][None]])
            coef, u = solver.refit_scalars(target, ys, zs)
            scales[g], offset[g] = coef, u
            self.y[g] = np.concatenate([self.y[g], pack_bits(new_y[g])[None]])
            self.z[g] = np.concatenate([self.z[g], pack_bits(new_z[g])[None]])
        self.scales, self.offset, self.bits = scales, offset, scales.shape[1]

    # --- reading ----------------------------------------------------------------------------
    def _unpacked_y(self, g: int) -> np.ndarray:
        return unpack_bits(self.y[g], self.ranks[g])

    def _unpacked_z(self, g: int) -> np.ndarray:
        return unpack_bits(self.z[g], self.grid.group_shapes()[g][1])

    def dequantize_group(self, index: int) -> np.ndarray:
        m, n = self.grid.group_shapes()[index]
        out = np.full((m, n), float(self.offset[index]))
        ys = self._unpacked_y(index).astype(np.float32)
        zs = self._unpacked_z(index).astype(np.float32)
        for (r, s, t), y, z in zip(self.scales[index].astype(np.float64), ys, zs, strict=True):
            yz = (y @ z).astype(np.float64)  # counts <= l: exact in float32, and twice as fast as float64
            out += r * yz + s * y.sum(axis=1, keepdims=True, dtype=np.float64) + t * z.sum(axis=0, keepdims=True,
                                                                                           dtype=np.float64)
        return out

    def scalars(self) -> np.ndarray:
        """(r, s, t) of every group and stack, then every group's offset u."""
        return np.concatenate([self.scales.ravel(), self.offset]).astype(np.float64)

    def set_scalars(self, values: np.ndarray) -> None:
        values = np.asarray(values, np.float64)
        if values.shape != (self.scales.size + self.offset.size,) or not np.isfinite(values).all():
            raise ValueError(f"expected {self.scales.size + self.offset.size} finite scalars, got {values.shape}")
        self.scales = values[:self.scales.size].reshape(self.scales.shape).astype(np.float32)
        self.offset = values[self.scales.size:].astype(np.float32)

    def group_bits(self, index: int) -> int:
        m, n = self.grid.group_shapes()[index]
        p = self.stacks
        return p * self.ranks[index] * (m + n) + 32 * (3 * p + 1)

    def kernel_layout(self) -> bqq_kernels.BQQLayout:
        """The packed factors of every group laid out for :func:`bqq_kernels.bqq_linear` (x·Ŵᵀ from bits)."""
        factors = [bqq_kernels.BQQGroupFactors(self.y[g], self.z[g], self.scales[g], float(self.offset[g]))
                   for g in range(len(self.grid))]
        return bqq_kernels.build_layout(factors, self.grid.row_sizes, self.grid.col_sizes)

    # --- format -----------------------------------------------------------------------------
    def extra_info(self) -> dict[str, Any]:
        rows, cols = self.grid.grid_shape
        return {"ranks": np.asarray(self.ranks).reshape(rows, cols).tolist()}

    def fields(self) -> dict[str, np.ndarray]:
        rows, cols = self.grid.grid_shape
        out = {"scales": self.scales.reshape(rows, cols, self.stacks, 3),
               "offset": self.offset.reshape(rows, cols)}
        for g, (a, b, _, _) in enumerate(self.grid.blocks()):
            out[f"y.{a}.{b}"] = self.y[g]
            out[f"z.{a}.{b}"] = self.z[g]
        return out

    @classmethod
    def field_specs(cls, info, grid) -> dict[str, FieldSpec]:
        p = info["bits"]
        ranks = grid_ints(info["ranks"], grid, "ranks")
        rows, cols = grid.grid_shape
        specs: dict[str, FieldSpec] = {"scales": ("float32", (rows, cols, p, 3)),
                                        "offset": ("float32", (rows, cols))}
        for g, (a, b, rs, cs) in enumerate(grid.blocks()):
            m, n, r = rs.stop - rs.start, cs.stop - cs.start, ranks[g]
            specs[f"y.{a}.{b}"] = ("uint8", (p, m, packed_length(r)))
            specs[f"z.{a}.{b}"] = ("uint8", (p, r, packed_length(n)))
        return specs

    @classmethod
    def from_fields(cls, info, grid, fields) -> BQQMatrix:
        ranks = grid_ints(info["ranks"], grid, "ranks")
        scales = fields["scales"].reshape(len(grid), info["bits"], 3)
        offset = fields["offset"].reshape(len(grid))
        if not (np.isfinite(scales).all() and np.isfinite(offset).all()):
            raise ValueError("scalars contain NaN or Inf")
        blocks = list(grid.blocks())
        ys = [checked_planes(fields[f"y.{a}.{b}"], r, f"y of group ({a}, {b})")
              for (a, b, _, _), r in zip(blocks, ranks, strict=True)]
        zs = [checked_planes(fields[f"z.{a}.{b}"], cs.stop - cs.start, f"z of group ({a}, {b})")
              for a, b, _, cs in blocks]
        return cls(tuple(info["shape"]), info["dtype"], grid, info["seed"], BQQConfig(**info["config"]), ranks,
                   ys, zs, scales.copy(), offset.copy())


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


__all__ = ["BQQConfig", "BQQMatrix", "auto_sweeps", "inner_dim"]
