"""What one BQQ stack solve needs to know besides its data: inner dimension, sweep count and schedule.

:class:`bqq.methods.bqq.BQQConfig` holds the user's settings; :meth:`StackSettings.of` reads them here
(duck-typed, so the solver does not import ``bqq.methods``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

POWER_ITERATIONS = 30  # power iterations for σ_max in the critical temperature T_c = 2 α σ_max
# Plain stacks: SWEEP_BUDGET / (l + BAND_COST) sweeps within [MIN_SWEEPS, MAX_SWEEPS]. A CPU sweep costs about
# l + BAND_COST multiply-adds per weight and phase (the GEMMs ~l, the 64-wide band updates ~32), so every
# group shape gets the same time per weight: 294 sweeps at 1024², 714 at 384², 1667 at 128² (the grouping
# and schedule tables of benchmarks/solver.py).
SWEEP_BUDGET = 1.6e5
BAND_COST = 32
MIN_SWEEPS, MAX_SWEEPS = 200, 2400
# Output-aware stacks and plain configs written before version 4: work per group, (m + n)·l² (+ n²·l under
# H) times sweeps, within [300, 6000]; the budget these were tuned with.
WEIGHTED_SWEEP_BUDGET = 1.4e10
PER_GROUP_SWEEP_BUDGET = 1.0e10
# An explicit weighted_sweep_budget may ask for fewer sweeps than 300: on the tiny Llama's 256² groups 50
# sweeps cost a little output error against the default's 834 and more, for a large saving in time
# (benchmarks/results/llm_grouping.md, docs/llm.md).
SET_WEIGHTED_MIN_SWEEPS = 50


def inner_dim(shape: tuple[int, int], rank_scale: float) -> int:
    """l = round(rank_scale · m n / (m + n)), at least 1."""
    m, n = shape
    return max(1, round(rank_scale * m * n / (m + n)))


def auto_sweeps(shape: tuple[int, int], rank: int, weighted: bool = False, budget: float | None = None,
                rule: str = "per_weight", min_sweeps: int = 300) -> int:
    """Default annealing length of one stack.

    ``rule="per_weight"`` (plain stacks): ``budget / (l + BAND_COST)`` sweeps (default :data:`SWEEP_BUDGET`)
    within [MIN_SWEEPS, MAX_SWEEPS], so time per weight does not grow as groups shrink.
    ``rule="per_group"`` (output-aware stacks, and configs of version <= 3):
    the same work (m + n)·l² (+ n²·l under H) per group, within [min_sweeps, 6000]; budget default
    :data:`WEIGHTED_SWEEP_BUDGET` or :data:`PER_GROUP_SWEEP_BUDGET`.
    """
    if rule == "per_weight" and not weighted:
        return int(min(MAX_SWEEPS, max(MIN_SWEEPS, round((budget or SWEEP_BUDGET) / (rank + BAND_COST)))))
    if rule not in ("per_weight", "per_group"):
        raise ValueError(f"unknown sweep rule {rule!r}: per_weight or per_group")
    if budget is None:
        budget = WEIGHTED_SWEEP_BUDGET if weighted else PER_GROUP_SWEEP_BUDGET
    work = (shape[0] + shape[1]) * rank * rank + (shape[1] ** 2 * rank if weighted else 0)
    return int(min(6000, max(min_sweeps, round(budget / work))))


@dataclass(frozen=True)
class StackSettings:
    """The annealing of one stack (see :mod:`bqq.solver` for the method).

    Attributes:
        sweeps: annealing sweeps (one U phase and one V phase each).
        t_start, t_end: first and last temperature as fractions of T_c (geometric in between).
        alpha_scale: the fixed ±1 scale while annealing, in units of rms(residual)/sqrt(l).
        polish_rounds: at most this many rounds of exact bit-flip descent after annealing.
        bulk_end: end the anneal at t_end times the bulk's critical temperature where it is below T_c
            (see :func:`bqq.solver.anneal.inverse_temperatures`).
        polish_tolerance: the polish also stops once a round flips at most this fraction of the (m + n)·l
            entries.
        aspect_exponent: T_U / T_V = (n/m)^(2·aspect_exponent) for non-square groups.
        restarts: independent anneals per group; the smallest sign-fit error is kept.
        polish_each: in a batch, each group's polish stops on its own flip count (its codes are then
            those it gets alone); False: the batch stops on its total.
    """

    sweeps: int
    t_start: float
    t_end: float
    alpha_scale: float
    polish_rounds: int
    aspect_exponent: float = 0.7
    restarts: int = 1
    polish_tolerance: float = 0.0
    bulk_end: bool = False
    polish_each: bool = False

    @classmethod
    def of(cls, config: Any, shape: tuple[int, int], rank: int, weighted: bool) -> StackSettings:
        """The settings a :class:`~bqq.methods.bqq.BQQConfig` gives a group of ``shape`` and inner dim
        ``rank``, under the plain or the output-aware (``weighted``) objective."""
        budget, min_sweeps = getattr(config, "sweep_budget", None), 300
        if weighted and getattr(config, "weighted_sweep_budget", None) is not None:
            budget, min_sweeps = config.weighted_sweep_budget, SET_WEIGHTED_MIN_SWEEPS
        rule = getattr(config, "sweep_rule", "per_weight")
        sweeps = config.sweeps or auto_sweeps(shape, rank, weighted, budget, rule, min_sweeps)
        return cls(sweeps=sweeps, polish_rounds=config.polish_rounds,
                   # (measured for plain stacks only: the output-aware polish still runs until nothing flips)
                   polish_tolerance=0.0 if weighted else getattr(config, "polish_tolerance", 0.0),
                   bulk_end=not weighted and getattr(config, "bulk_end", False),
                   aspect_exponent=config.aspect_exponent, restarts=config.restarts, **config.schedule(weighted))
