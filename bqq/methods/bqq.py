"""BQQ: W ≈ Σ_i (r_i Y_i Z_i + s_i Y_i 1 + t_i 1 Z_i) + u per group, Y_i, Z_i binary.

Stacks are added greedily: each new stack is solved on the current residual of every group, then
all 3p + 1 scalars of the group are refitted exactly by least squares on the binaries (:mod:`bqq.solver`,
on the CPU or a torch device). ``compress(w, bits=p)`` is literally p calls of the stack step, so
``compress(w, bits=2).extend(2)`` equals ``compress(w, bits=4)`` bit for bit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

import bqq_kernels

from ..common import as_float_matrix, check_settings, hessian_matrix, is_int, is_number, progress_bar
from ..format import pack_bits, packed_length, unpack_bits
from ..grouping import GroupGrid
from ..quantized import GroupField, QuantizedMatrix
from ..solver import (
    GroupCodes,
    StackSettings,
    auto_sweeps,
    backend_for,
    clipped_channels,
    damped,
    grow_grid,
    inner_dim,
    prepare_hessian,
    solve_groups,
    solver_device,
)
from ..solver.stacks import MapSolves
from .registry import register_method


@dataclass(frozen=True)
class BQQConfig:
    """Settings of the BQQ solver (all optional; pass them as ``bqq.compress(..., name=value)``).

    Attributes:
        rank_scale: l = round(rank_scale · m n / (m + n)) per group (the paper's l_scale).
        sweeps: annealing sweeps per stack; None picks ``auto_sweeps`` from the group shape.
        sweep_budget: the work ``auto_sweeps`` spends: plain stacks (``sweep_rule="per_weight"``) run
            sweep_budget / (l + 32) sweeps within [200, 2400] (None: 1.6e5, so 294 sweeps at 1024², 714 at
            384², 1667 at 128²: the same time per weight for every group shape; less trades error for
            time, see the grouping table of benchmarks/solver.py); output-aware stacks spend
            (m + n)·l² + n²·l per sweep out of 1.4e10 per group (or out of sweep_budget, when set and
            weighted_sweep_budget is None). See bqq.solver.settings.
        weighted_sweep_budget: the output-aware stacks' own work per group (None: as above), within [50,
            6000] sweeps; lets a schedule set both objectives (bqq.ptq.plan's LLM schedule does).
        sweep_rule: "per_weight" (above) or "per_group" (every plain group (m + n)·l²·sweeps = 1.0e10,
            within [300, 6000]: the schedule of configs written before version 4, which read with it;
            before version 3 also t_start 0.95 and a budget of 1.4e10).
        bulk_end: plain stacks end the anneal at t_end times the critical temperature of the bulk of the
            spectrum (a Gaussian matrix's, 2α·rms·(√m + √n)) where that is below T_c. Real weights have a
            few large singular values that set T_c, and ending at t_end·T_c left their bulk disordered
            (benchmarks/minilm_schedule.py). Configs before version 4: False.
        polish_tolerance: the polish stops once a round flips at most this fraction of a stack's entries
            (configs before version 4: 0, run until nothing flips or ``polish_rounds``).
        t_start, t_end: annealing temperatures as fractions of the critical temperature. Starting at
            0.6 T_c rather than 0.95 reaches the same error in fewer sweeps (384×384 plain groups, 353
            sweeps against the 494 of the version-2 schedule: ``benchmarks/results/solver_baseline.md``).
        alpha_scale: fixed ±1 scale during annealing, in units of rms(residual)/sqrt(l).
        aspect_exponent: per-side temperature split for non-square groups (see bqq.solver.settings).
        polish_rounds: maximum rounds of exact bit-flip descent after annealing.
        restarts: independent anneals per group and stack; the best is kept.
        batch_groups: groups of one shape solved together (bounds memory: ~5 m n · 4 bytes each).
        channel_clip: with a ``hessian`` H, input channels count at most ``channel_clip`` times the median
            channel (:func:`bqq.solver.hessian_math.clipped_channels`; a huge value keeps H as measured).
        damping: with a ``hessian`` H (mean diagonal 1), solve under H + damping·I: half the weight on
            the calibration inputs, half on every direction alike. Calibration sets are small, and BQQ's
            shared binaries can move error into directions they barely excite: with GPTQ's usual 0.01
            the codes fit the calibration sentences of MiniLM and lost to data-free BQQ on new ones;
            0.3 to 1.0 beat GPTQ's held-out output error per layer, and 1.0 kept MiniLM's first layer
            closest to the FP model (measured per layer when damping was introduced, in no committed
            table; ``benchmarks/ptq_transformer.py --rows bqq+ --option damping=...`` compares values on
            the whole model).
        weighted_t_start, weighted_t_end, weighted_alpha_scale: the same settings for the output-aware
            objective (a ``hessian``). Calibration inputs have a few outlier directions (MiniLM: H's
            largest eigenvalue far above its mean), which dominate T_c = 2 α σ_max(X H) while most
            directions order at far lower temperatures; this colder schedule with a smaller α lowered the
            held-out output error of 2-stack MiniLM layers (measured on five layers when it was
            introduced, in no committed table; ``benchmarks/ptq_transformer.py --rows bqq+ --option
            weighted_t_start=...`` compares schedules on the whole model).
    """

    # 2: channel_clip, damping, weighted_*; 3: sweep_budget (and t_start 0.6 by default); 4: sweep_rule,
    # polish_tolerance, bulk_end (per-weight schedule by default); 5: weighted_sweep_budget.
    VERSION: ClassVar[int] = 5
    # Defaults a config written with an older version was solved with (config_from_dict fills them in).
    DEFAULTS_BEFORE: ClassVar[dict[int, dict[str, Any]]] = {
        2: {"sweep_budget": 1.4e10, "t_start": 0.95},
        3: {"sweep_rule": "per_group", "polish_tolerance": 0.0, "bulk_end": False},
    }

    rank_scale: float = 1.0
    sweeps: int | None = None
    sweep_budget: float | None = None
    weighted_sweep_budget: float | None = None
    sweep_rule: str = "per_weight"
    polish_tolerance: float = 1e-4
    bulk_end: bool = True
    t_start: float = 0.6
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
            "sweep_budget": self.sweep_budget is None or (is_number(self.sweep_budget) and self.sweep_budget > 0),
            "weighted_sweep_budget": self.weighted_sweep_budget is None
            or (is_number(self.weighted_sweep_budget) and self.weighted_sweep_budget > 0),
            "sweep_rule": self.sweep_rule in ("per_weight", "per_group"),
            "polish_tolerance": is_number(self.polish_tolerance) and 0 <= self.polish_tolerance < 1,
            "bulk_end": isinstance(self.bulk_end, bool),
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
    spreads_groups = True
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
    def quantize(cls, w, grid, bits, seed, config, progress=None, first_group=0, hessian=None, device=None,
                 map_solves=None) -> BQQMatrix:
        shapes = grid.group_shapes()
        ranks = [inner_dim(s, config.rank_scale) for s in shapes]
        empty = cls(w.shape, "float64", grid, 0, seed, config,
                    y=[np.zeros((0, m, packed_length(r)), np.uint8) for (m, _), r in zip(shapes, ranks, strict=True)],
                    z=[np.zeros((0, r, packed_length(n)), np.uint8) for (_, n), r in zip(shapes, ranks, strict=True)],
                    scales=np.zeros((len(grid), 0, 3), np.float32), offset=np.zeros(len(grid), np.float32))
        empty.first_group = first_group
        empty._add_stacks(w, int(bits), progress, hessian, device, map_solves=map_solves)
        return empty

    @classmethod
    def quantize_many(cls, matrices: list[np.ndarray], bits: int, seeds: list[int], first_groups: list[int],
                      config: BQQConfig, device: Any, progress: Any = None) -> list[BQQMatrix]:
        """Single-group problems of one shape, each as ``quantize(matrix, one group, bits, seed, config,
        first_group=...)``, solved together on ``device`` (None: the CPU; the model pass batches groups of
        one shape across layers this way): on the CPU with the codes each gets alone (its polish stops on
        its own flip count). ``progress``: called with a group count after each stack of a batch."""
        m, n = matrices[0].shape
        grid = GroupGrid.build((m, n), (m, n))
        rank = inner_dim((m, n), config.rank_scale)
        codes = solve_groups(backend_for(device), np.stack(matrices), int(bits), rank=rank,
                             settings=dataclasses.replace(StackSettings.of(config, (m, n), rank, False),
                                                          polish_each=True), seeds=list(seeds),
                             group_ids=list(first_groups), progress=progress).numpy()
        return [cls((m, n), "float64", grid, int(bits), seed, config, y=[pack_bits(codes.ys[j])],
                    z=[pack_bits(codes.zs[j])], scales=codes.scales[j:j + 1], offset=codes.offset[j:j + 1])
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
        h = None if hessian is None else prepare_hessian(hessian_matrix(hessian, self.shape[1]))
        self._add_stacks(source, int(extra_bits), progress, h, solver_device(device))
        return self

    def _add_stacks(self, w: np.ndarray, count: int, progress: bool | None, hessian: np.ndarray | None = None,
                    device: Any = None, map_solves: MapSolves | None = None) -> None:
        """``count`` stacks for every group (:func:`bqq.solver.grow_grid`) on ``device`` (None: the CPU);
        under ``hessian`` (prepared H) damped and channel-capped as configured, column block by column block,
        each block's groups solved by ``map_solves`` if given."""
        cfg = self.config
        h = None if hessian is None else damped(clipped_channels(hessian, cfg.channel_clip), cfg.damping, copy=False)
        where = "" if device is None else f" on {device}"
        with progress_bar(total=count * len(self.grid), progress=progress, unit="group",
                          desc=f"bqq {self.shape[0]}x{self.shape[1]}{where}") as bar:
            codes = grow_grid(backend_for(device, cfg.batch_groups), w, self.grid,
                              [self._group_codes(g) for g in range(len(self.grid))], count, seed=self.seed,
                              first_group=self.first_group, ranks=self.ranks,
                              settings=lambda shape, rank, weighted: StackSettings.of(cfg, shape, rank, weighted),
                              hessian=h, progress=bar.update, map_solves=map_solves)
        self.y = [pack_bits(c.ys[0]) for c in codes]
        self.z = [pack_bits(c.zs[0]) for c in codes]
        self.scales = np.concatenate([c.scales for c in codes]).astype(np.float32)
        self.offset = np.concatenate([c.offset for c in codes]).astype(np.float32)
        self.bits = self.scales.shape[1]

    def _group_codes(self, g: int) -> GroupCodes:
        """Group ``g``'s codes unpacked (G = 1), for adding stacks."""
        (m, n), rank, p = self.grid.group_shapes()[g], self.ranks[g], self.stacks
        ys = self._unpacked_y(g) if p else np.zeros((0, m, rank), np.uint8)
        zs = self._unpacked_z(g) if p else np.zeros((0, rank, n), np.uint8)
        return GroupCodes(ys[None], zs[None], np.asarray(self.scales[g], np.float32)[None],
                          np.asarray(self.offset[g:g + 1], np.float32))

    # --- reading ----------------------------------------------------------------------------
    def _unpacked_y(self, g: int) -> np.ndarray:
        return unpack_bits(self.y[g], self.ranks[g])

    def _unpacked_z(self, g: int) -> np.ndarray:
        return unpack_bits(self.z[g], self.grid.group_shapes()[g][1])

    def dequantize_group(self, index: int) -> np.ndarray:
        return self._group_codes(index).dequantize()[0]

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


__all__ = ["BQQConfig", "BQQMatrix", "auto_sweeps", "inner_dim", "solver_device"]
