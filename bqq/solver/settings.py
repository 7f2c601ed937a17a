"""What one BQQ stack solve needs to know besides its data: inner dimension, sweep count and schedule.

:class:`bqq.methods.bqq.BQQConfig` holds the user's settings; :meth:`StackSettings.of` reads them here
(duck-typed, so the solver does not import ``bqq.methods``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

POWER_ITERATIONS = 30  # power iterations for σ_max in the critical temperature T_c = 2 α σ_max
# Work per stack, (m + n)·l² (+ n²·l under H) times sweeps. Plain: 353 sweeps for a 384×384 group, which from
# 0.6 T_c reach the error that 494 sweeps from 0.95 T_c gave (the schedule table of benchmarks/solver.py).
# The output-aware schedule keeps the budget it was tuned with.
SWEEP_BUDGET = 1.0e10
WEIGHTED_SWEEP_BUDGET = 1.4e10


def inner_dim(shape: tuple[int, int], rank_scale: float) -> int:
    """l = round(rank_scale · m n / (m + n)), at least 1."""
    m, n = shape
    return max(1, round(rank_scale * m * n / (m + n)))


def auto_sweeps(shape: tuple[int, int], rank: int, weighted: bool = False, budget: float | None = None) -> int:
    """Default annealing length: the same work per stack for every group shape, within [300, 6000].

    A sweep costs about (m + n)·l² multiply-adds, plus n²·l for the H coupling of the output-aware
    (``weighted``) V phase. Small groups are cheap and need long schedules to reach their best error;
    large ones self-average. ``budget`` (default :data:`SWEEP_BUDGET`, or :data:`WEIGHTED_SWEEP_BUDGET`
    when weighted) gives a 384×384 stack 353 sweeps and a 128×128 stack 6000.
    """
    if budget is None:
        budget = WEIGHTED_SWEEP_BUDGET if weighted else SWEEP_BUDGET
    work = (shape[0] + shape[1]) * rank * rank + (shape[1] ** 2 * rank if weighted else 0)
    return int(min(6000, max(300, round(budget / work))))


@dataclass(frozen=True)
class StackSettings:
    """The annealing of one stack (see :mod:`bqq.solver` for the method).

    Attributes:
        sweeps: annealing sweeps (one U phase and one V phase each).
        t_start, t_end: first and last temperature as fractions of T_c (geometric in between).
        alpha_scale: the fixed ±1 scale while annealing, in units of rms(residual)/sqrt(l).
        polish_rounds: at most this many rounds of exact bit-flip descent after annealing.
        aspect_exponent: T_U / T_V = (n/m)^(2·aspect_exponent) for non-square groups.
        restarts: independent anneals per group; the smallest sign-fit error is kept.
    """

    sweeps: int
    t_start: float
    t_end: float
    alpha_scale: float
    polish_rounds: int
    aspect_exponent: float = 0.7
    restarts: int = 1

    @classmethod
    def of(cls, config: Any, shape: tuple[int, int], rank: int, weighted: bool) -> StackSettings:
        """The settings a :class:`~bqq.methods.bqq.BQQConfig` gives a group of ``shape`` and inner dim
        ``rank``, under the plain or the output-aware (``weighted``) objective."""
        sweeps = config.sweeps or auto_sweeps(shape, rank, weighted, getattr(config, "sweep_budget", None))
        return cls(sweeps=sweeps, polish_rounds=config.polish_rounds,
                   aspect_exponent=config.aspect_exponent, restarts=config.restarts, **config.schedule(weighted))
