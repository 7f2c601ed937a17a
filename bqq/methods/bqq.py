"""BQQ: W ≈ Σ_i (r_i Y_i Z_i + s_i Y_i 1 + t_i 1 Z_i) + u per group, Y_i, Z_i binary.

Stacks are added greedily: each new stack is solved on the current residual of every group
(:mod:`bqq.solver`), then all 3p + 1 scalars of the group are refitted exactly by least squares on
the binaries. ``compress(w, bits=p)`` is literally p calls of the stack step, so
``compress(w, bits=2).extend(2)`` equals ``compress(w, bits=4)`` bit for bit.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

import bqq_kernels

from .. import solver, solver_torch
from ..common import as_float_matrix, check_settings, hessian_matrix, is_int, is_number, progress_bar
from ..format import pack_bits, packed_length, unpack_bits
from ..grouping import GroupGrid
from ..quantized import GroupField, QuantizedMatrix
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
        channel_clip: with a ``hessian`` H, input channels count at most ``channel_clip`` times the median
            channel (:func:`bqq.solver.clipped_channels`; a huge value keeps H as measured).
        damping: with a ``hessian`` H (mean diagonal 1), solve under H + damping·I: half the weight on
            the calibration inputs, half on every direction alike. Calibration sets are small, and BQQ's
            shared binaries can move error into directions they barely excite: with GPTQ's usual 0.01
            the codes fit the calibration sentences of MiniLM and lost to data-free BQQ on new ones;
            0.3-1.0 gave 10-30 % lower held-out output error than GPTQ per layer, and 1.0 kept MiniLM's
            first layer closest to the FP model (embedding cosine 0.972 against 0.967 at 0.3).
        weighted_t_start, weighted_t_end, weighted_alpha_scale: the same settings for the output-aware
            objective (a ``hessian``). Calibration inputs have a few outlier directions (MiniLM: H's
            largest eigenvalue ~70× its mean), which dominate T_c = 2 α σ_max(X H) while most directions
            order at far lower temperatures; this colder schedule with a smaller α lowered the output
            error of 2-stack MiniLM layers by 13 % (on held-out sentences, geometric mean of 5 layers:
            0.263 -> 0.228).
    """

    VERSION: ClassVar[int] = 2  # 2: channel_clip, damping, weighted_* (version-1 configs read unchanged)

    rank_scale: float = 1.0
    sweeps: int | None = None
    t_start: float = 0.95
    t_end: float = 0.18
    alpha_scale: float = 0.9
    aspect_exponent: float = 0.7
    polish_rounds: int = 50
    restarts: int = 1
    batch_groups: int = 64
    channel_clip: float = 3.0
    damping: float = 1.0
    weighted_t_start: float = 0.1
    weighted_t_end: float = 0.005
    weighted_alpha_scale: float = 0.5

    def __post_init__(self) -> None:
        check_settings(self, {
            "rank_scale": is_number(self.rank_scale) and 0 < self.rank_scale <= 16,
            "sweeps": self.sweeps is None or (is_int(self.sweeps) and 1 <= self.sweeps <= 1_000_000),
            "t_start": is_number(self.t_start) and self.t_start > 0,
            "t_end": is_number(self.t_end) and 0 < self.t_end <= self.t_start,
            "alpha_scale": is_number(self.alpha_scale) and self.alpha_scale > 0,
            "aspect_exponent": is_number(self.aspect_exponent) and 0 <= self.aspect_exponent <= 2,
            "polish_rounds": is_int(self.polish_rounds) and self.polish_rounds >= 0,
            "restarts": is_int(self.restarts) and 1 <= self.restarts <= 64,
            "batch_groups": is_int(self.batch_groups) and self.batch_groups >= 1,
            "channel_clip": is_number(self.channel_clip) and self.channel_clip >= 1,
            "damping": is_number(self.damping) and 0 <= self.damping <= 100,
            "weighted_t_start": is_number(self.weighted_t_start) and self.weighted_t_start > 0,
            "weighted_t_end": is_number(self.weighted_t_end) and 0 < self.weighted_t_end <= self.weighted_t_start,
            "weighted_alpha_scale": is_number(self.weighted_alpha_scale) and self.weighted_alpha_scale > 0,
        })

    def schedule(self, weighted: bool) -> dict[str, float]:
        """t_start, t_end and alpha_scale for the plain or the output-aware (``weighted``) objective."""
        if weighted:
            return {"t_start": self.weighted_t_start, "t_end": self.weighted_t_end,
                    "alpha_scale": self.weighted_alpha_scale}
        return {"t_start": self.t_start, "t_end": self.t_end, "alpha_scale": self.alpha_scale}


SWEEP_BUDGET = 1.4e10  # (m + n) · l² · sweeps: about 500 sweeps for a 384×384 group


def auto_sweeps(shape: tuple[int, int], rank: int, weighted: bool = False) -> int:
    """Default annealing length: the same work per stack for every group shape, within [300, 6000].

    A sweep costs about (m + n)·l² multiply-adds, plus n²·l for the H coupling of the output-aware
    (``weighted``) V phase. Small groups are cheap and need long schedules to reach their best error;
    large ones self-average. The budget keeps a 384×384 stack near 2-3 s on two cores and gives a
    128×128 stack 6000 sweeps (about 2 s).
    """
    work = (shape[0] + shape[1]) * rank * rank + (shape[1] ** 2 * rank if weighted else 0)
    return int(min(6000, max(300, round(SWEEP_BUDGET / work))))


def inner_dim(shape: tuple[int, int], rank_scale: float) -> int:
    """l = round(rank_scale · m n / (m + n)), at least 1."""
    m, n = shape
    return max(1, round(rank_scale * m * n / (m + n)))


@register_method("bqq")
class BQQMatrix(QuantizedMatrix):
    """A BQQ-compressed matrix: per group p stacks of packed binaries and FP32 scalars.

    For group g of shape (m_g, n_g) with inner dim l_g (``ranks[g]``): ``y[g]`` uint8
    (p, m_g, ceil(l_g/8)), ``z[g]`` uint8 (p, l_g, ceil(n_g/8)) (packed along the last axis),
    ``scales`` float32 (G, p, 3) rows (r, s, t), ``offset`` float32 (G,) u. See docs/format.md.
    """

    config_class = BQQConfig
    min_bits = 1
    max_bits = 16
    bits_meaning = "stacks p: p binary products per group, about p bits per weight (the paper's p*)"
    meta_key = meta_attr = "ranks"
    output_aware = True
    solves_on_devices = True
    group_fields = (
        GroupField("y", "uint8", lambda g: (g.bits, g.rows, packed_length(g.meta)), packed_bits=lambda g: g.meta),
        GroupField("z", "uint8", lambda g: (g.bits, g.meta, packed_length(g.cols)), packed_bits=lambda g: g.cols),
        GroupField("scales", "float32", lambda g: (g.bits, 3), per_group=False),
        GroupField("offset", "float32", lambda g: (), per_group=False),
    )

    @classmethod
    def group_meta(cls, shape, bits, config) -> int:
        return inner_dim(shape, config.rank_scale)

    @property
    def stacks(self) -> int:
        """Number of stacks p (the "pseudo bits")."""
        return self.scales.shape[1]

    # --- building ---------------------------------------------------------------------------
    @classmethod
    def quantize(cls, w, grid, bits, seed, config, progress=None, first_group=0, hessian=None, device=None
                 ) -> BQQMatrix:
        shapes = grid.group_shapes()
        ranks = [inner_dim(s, config.rank_scale) for s in shapes]
        empty = cls(w.shape, "float64", grid, 0, seed, config,
                    y=[np.zeros((0, m, packed_length(r)), np.uint8) for (m, _), r in zip(shapes, ranks, strict=True)],
                    z=[np.zeros((0, r, packed_length(n)), np.uint8) for (_, n), r in zip(shapes, ranks, strict=True)],
                    scales=np.zeros((len(grid), 0, 3), np.float32), offset=np.zeros(len(grid), np.float32))
        empty.first_group = first_group
        empty._add_stacks(w, int(bits), progress, hessian, device)
        return empty

    @classmethod
    def quantize_many(cls, matrices: list[np.ndarray], bits: int, seeds: list[int], first_groups: list[int],
                      config: BQQConfig, device: Any, progress: Any = None) -> list[BQQMatrix]:
        """Single-group problems of one shape, each as ``quantize(matrix, one group, bits, seed, config,
        first_group=...)``, solved together on ``device`` (the model pass batches groups of one shape
        across layers this way). ``progress``: called with a group count after each stack of a batch."""
        m, n = matrices[0].shape
        grid = GroupGrid.build((m, n), (m, n))
        codes = solver_torch.quantize_groups_torch(np.stack(matrices), int(bits), seed=seeds, group_ids=first_groups,
                                                   config=config, device=device, progress=progress)
        arrays = _packed_codes(codes)
        return [cls((m, n), "float64", grid, int(bits), seed, config, y=[arrays["y"][j]], z=[arrays["z"][j]],
                    scales=arrays["scales"][j:j + 1], offset=arrays["offset"][j:j + 1])
                for j, seed in enumerate(seeds)]

    def extend(self, extra_bits: int, w: Any = None, progress: bool | None = None, hessian: Any = None,
               device: Any = None) -> BQQMatrix:
        """Add ``extra_bits`` stacks on the current residual, keeping every earlier binary.

        Args:
            extra_bits: stacks to add (>= 1; the total stays <= 16).
            w: the original matrix; needed when this matrix was loaded from a file (the one it was
                compressed from is kept in memory otherwise).
            hessian: solve the new stacks (and refit all scalars) under tr(E H Eᵀ), as in
                :func:`bqq.compress`.
            device: where to solve, as in :func:`bqq.compress` (None: the CPU).

        Returns:
            self, extended in place. All scalars are refitted, so the error never increases.
        """
        if isinstance(extra_bits, bool) or not isinstance(extra_bits, (int, np.integer)) or extra_bits < 1:
            raise ValueError(f"extra_bits must be a positive integer, got {extra_bits!r}")
        if self.stacks + extra_bits > self.max_bits:
            raise ValueError(f"{self.stacks} + {extra_bits} stacks exceed the maximum of {self.max_bits}")
        if w is not None:
            source, _ = as_float_matrix(w)  # on the CPU: the solver's device is the ``device`` argument
            if source.shape != self.shape:
                raise ValueError(f"w has shape {source.shape}, this matrix was compressed from {self.shape}")
        elif self._source is not None:
            source = self._source
        else:
            raise ValueError("extend() needs the original matrix: this one was loaded from a file or "
                             "released its source; call q.extend(bits, w=original)")
        h = None if hessian is None else solver.prepare_hessian(hessian_matrix(hessian, self.shape[1]))
        self._add_stacks(source, int(extra_bits), progress, h, solver_device(device))
        return self

    def _add_stacks(self, w: np.ndarray, count: int, progress: bool | None, hessian: np.ndarray | None = None,
                    device: Any = None) -> None:
        if device is not None and hessian is None:
            return self._add_stacks_on(device, w, count, progress)
        codes = _Codes.of(self)
        with progress_bar(total=count * len(self.grid), progress=progress, unit="group",
                          desc=f"bqq {self.shape[0]}x{self.shape[1]}") as bar:
            if hessian is None:
                self._grow(dict(enumerate(self.grid.split(w))), None, count, codes, bar)
            else:
                self._grow_column_blocks(w, hessian, count, codes, bar)
        codes.store(self)

    def _grow_column_blocks(self, w: np.ndarray, hessian: np.ndarray, count: int, codes: _Codes, bar: Any) -> None:
        """Under tr(E H Eᵀ): column block after column block (:func:`bqq.solver.column_blocks`), each
        block's groups under its Schur complement, their error carried onto the later columns."""
        h = solver.damped(solver.clipped_channels(hessian, self.config.channel_clip), self.config.damping)
        target = np.array(w, np.float64)
        for b, (cs, weight, carry) in enumerate(solver.column_blocks(h, self.grid.col_sizes)):
            rows = {g: rs for g, (_, col, rs, _) in enumerate(self.grid.blocks()) if col == b}
            targets = {g: np.ascontiguousarray(target[rs, cs]) for g, rs in rows.items()}
            self._grow(targets, weight, count, codes, bar)
            if carry is not None:
                error = np.empty((self.shape[0], cs.stop - cs.start))
                for g, rs in rows.items():
                    error[rs] = targets[g] - codes.rebuild(g)
                target[:, cs.stop:] += error @ carry

    def _grow(self, targets: dict[int, np.ndarray], weight: np.ndarray | None, count: int, codes: _Codes,
              bar: Any) -> None:
        """Add ``count`` stacks to the groups in ``targets`` (group -> (m_g, n_g) target), greedily, each
        followed by the exact refit of the group's scalars (under ``weight``, an H shared by these groups)."""
        by_shape: dict[tuple[int, int, int], list[int]] = defaultdict(list)
        for g in targets:
            by_shape[(*targets[g].shape, self.ranks[g])].append(g)
        batches = [(key[2], idx[i:i + self.config.batch_groups]) for key, idx in by_shape.items()
                   for i in range(0, len(idx), self.config.batch_groups)]
        for _ in range(count):
            residuals = {g: t - codes.rebuild(g) for g, t in targets.items()}
            for rank, idx in batches:
                h = None if weight is None else np.broadcast_to(weight, (len(idx), *weight.shape))
                ys, zs = self._solve_batch([residuals[g] for g in idx], rank, len(codes.ys[idx[0]]), idx, h)
                for g, y, z in zip(idx, ys, zs, strict=True):
                    codes.ys[g].append(y)
                    codes.zs[g].append(z)
                bar.update(len(idx))
            for g, t in targets.items():
                coef, u = solver.refit_scalars(t, np.stack(codes.ys[g]), np.stack(codes.zs[g]), weight)
                codes.scales[g], codes.offset[g] = coef.astype(np.float32), np.float32(u)

    def _add_stacks_on(self, device: Any, w: np.ndarray, count: int, progress: bool | None) -> None:
        """:meth:`_add_stacks` with :mod:`bqq.solver_torch` on ``device``: the groups of each shape at once
        (batched by device memory), stack by stack, refit on the device; same seeds as on the CPU."""
        targets = self.grid.split(w)
        by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
        for g, shape in enumerate(self.grid.group_shapes()):
            by_shape[shape].append(g)
        total = self.stacks + count
        scales = np.zeros((len(self.grid), total, 3), np.float32)
        offset = np.zeros(len(self.grid), np.float32)
        with progress_bar(total=count * len(self.grid), progress=progress, unit="group",
                          desc=f"bqq {self.shape[0]}x{self.shape[1]} on {device}") as bar:
            for idx in by_shape.values():
                initial = None if self.stacks == 0 else solver_torch.GroupCodes(
                    *(torch.from_numpy(np.stack(a)) for a in (
                        [self._unpacked_y(g) for g in idx], [self._unpacked_z(g) for g in idx],
                        [self.scales[g] for g in idx], [self.offset[g] for g in idx])))
                codes = solver_torch.quantize_groups_torch(
                    np.stack([targets[g] for g in idx]), count, rank=self.ranks[idx[0]], seed=self.seed,
                    group_ids=[self.first_group + g for g in idx], config=self.config, device=device,
                    initial=initial, progress=bar.update)
                arrays = _packed_codes(codes)
                for j, g in enumerate(idx):
                    self.y[g], self.z[g] = arrays["y"][j], arrays["z"][j]
                scales[idx], offset[idx] = arrays["scales"], arrays["offset"]
        self.scales, self.offset, self.bits = scales, offset, total

    def _solve_batch(self, residuals: list[np.ndarray], rank: int, stack: int, groups: list[int],
                     hessian: np.ndarray | None = None):
        cfg = self.config
        restarts = cfg.restarts
        x = np.repeat(np.stack(residuals), restarts, axis=0)
        h = None if hessian is None else np.repeat(hessian, restarts, axis=0)
        seeds = [(self.seed, stack, self.first_group + g, r) for g in groups for r in range(restarts)]
        sweeps = cfg.sweeps or auto_sweeps(x.shape[1:], rank, weighted=h is not None)
        u, v = solver.solve_sign_factors(x, rank, seeds, sweeps=sweeps, polish_rounds=cfg.polish_rounds,
                                         aspect_exponent=cfg.aspect_exponent, hessian=h,
                                         **cfg.schedule(h is not None))
        best = solver.sign_fit_error(x, u, v, h).reshape(len(groups), restarts).argmin(axis=1)
        pick = np.arange(len(groups)) * restarts + best
        ys = [(u[k] > 0).astype(np.uint8) for k in pick]
        zs = [np.ascontiguousarray((v[k] > 0).astype(np.uint8).T) for k in pick]
        return ys, zs

    # --- reading ----------------------------------------------------------------------------
    def _unpacked_y(self, g: int) -> np.ndarray:
        return unpack_bits(self.y[g], self.ranks[g])

    def _unpacked_z(self, g: int) -> np.ndarray:
        return unpack_bits(self.z[g], self.grid.group_shapes()[g][1])

    def dequantize_group(self, index: int) -> np.ndarray:
        return _rebuild(self.grid.group_shapes()[index], self._unpacked_y(index), self._unpacked_z(index),
                        self.scales[index], self.offset[index])

    def group_scalars(self, index: int) -> np.ndarray:
        """(r, s, t) of every stack of group ``index``, then its offset u."""
        return np.append(self.scales[index].ravel(), self.offset[index]).astype(np.float64)

    def set_group_scalars(self, index: int, values: np.ndarray) -> None:
        values = np.asarray(values, np.float64)
        count = self.scales[index].size + 1
        if values.shape != (count,) or not np.isfinite(values).all():
            raise ValueError(f"expected {count} finite scalars for group {index}, got shape {values.shape}")
        self.scales[index] = values[:-1].reshape(self.scales.shape[1:])
        self.offset[index] = values[-1]

    def group_bits(self, index: int) -> int:
        m, n = self.grid.group_shapes()[index]
        p = self.stacks
        return p * self.ranks[index] * (m + n) + 32 * (3 * p + 1)

    def kernel_layout(self) -> bqq_kernels.BQQLayout:
        """The packed factors of every group laid out for :func:`bqq_kernels.bqq_linear` (x·Ŵᵀ from bits)."""
        factors = [bqq_kernels.BQQGroupFactors(self.y[g], self.z[g], self.scales[g], float(self.offset[g]))
                   for g in range(len(self.grid))]
        return bqq_kernels.build_layout(factors, self.grid.row_sizes, self.grid.col_sizes)


def _rebuild(shape: tuple[int, int], ys: Any, zs: Any, scales: np.ndarray, offset: float) -> np.ndarray:
    """One group (m, n) in float64 from its unpacked binaries ys (p, m, l), zs (p, l, n), float32 scales
    (p, 3) and offset."""
    out = np.full(shape, float(offset))
    for (r, s, t), y, z in zip(np.asarray(scales, np.float64), ys, zs, strict=True):
        y, z = y.astype(np.float32), z.astype(np.float32)
        yz = (y @ z).astype(np.float64)  # counts <= l: exact in float32, and twice as fast as float64
        out += r * yz + s * y.sum(axis=1, keepdims=True, dtype=np.float64) + t * z.sum(axis=0, keepdims=True,
                                                                                       dtype=np.float64)
    return out


@dataclass
class _Codes:
    """A BQQ matrix's codes while stacks are added: per group the unpacked binaries and the scalars."""

    shapes: list[tuple[int, int]]
    ys: list[list[np.ndarray]]  # group -> p arrays (m, l) in {0, 1}
    zs: list[list[np.ndarray]]  # group -> p arrays (l, n)
    scales: list[np.ndarray]  # group -> (p, 3) float32
    offset: list[np.float32]

    @classmethod
    def of(cls, q: BQQMatrix) -> _Codes:
        groups = range(len(q.grid))
        return cls(q.grid.group_shapes(), [list(q._unpacked_y(g)) for g in groups],
                   [list(q._unpacked_z(g)) for g in groups], [q.scales[g] for g in groups],
                   [q.offset[g] for g in groups])

    def rebuild(self, g: int) -> np.ndarray:
        return _rebuild(self.shapes[g], self.ys[g], self.zs[g], self.scales[g], self.offset[g])

    def store(self, q: BQQMatrix) -> None:
        """Write the codes into ``q`` (packed bits, float32 scalars)."""
        q.y = [pack_bits(np.stack(y)) for y in self.ys]
        q.z = [pack_bits(np.stack(z)) for z in self.zs]
        q.scales, q.offset = np.stack(self.scales).astype(np.float32), np.array(self.offset, np.float32)
        q.bits = q.scales.shape[1]


def _packed_codes(codes: solver_torch.GroupCodes) -> dict[str, Any]:
    """Device codes (G, p, m, l) / (G, p, l, n) as this class stores them: packed bits per group, float32
    scalars (G, p, 3) and offsets (G,), on the CPU."""
    ys, zs = codes.ys.cpu().numpy(), codes.zs.cpu().numpy()
    return {"y": [pack_bits(y) for y in ys], "z": [pack_bits(z) for z in zs],
            "scales": codes.scales.cpu().numpy().astype(np.float32),
            "offset": codes.offset.cpu().numpy().astype(np.float32)}


def solver_device(device: Any) -> torch.device | None:
    """The device the BQQ solver runs on for a ``device`` argument: None for the CPU (numba), else a
    :class:`torch.device` handled by :mod:`bqq.solver_torch` (CUDA; the CPU only in tests, through
    :data:`TORCH_SOLVER_DEVICE_TYPES`). ValueError for a device string torch does not know."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be None, 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if dev.type not in TORCH_SOLVER_DEVICE_TYPES:
        if dev.type == "cpu":
            return None
        raise ValueError(f"the BQQ solver runs on the CPU or on CUDA devices, got {device!r}")
    return dev


# Device types the torch/Triton solver handles. Tests add "cpu" (Triton's interpreter) to run that path.
TORCH_SOLVER_DEVICE_TYPES = {"cuda"}


__all__ = ["BQQConfig", "BQQMatrix", "auto_sweeps", "inner_dim", "solver_device"]
