"""One binary stack for a batch of residuals: starts, annealing schedule, polish and restarts, written
once over a backend (:mod:`bqq.solver.backend`).

The backend owns the large arrays (the centered residuals, the magnetizations, X H) and the sweeps; this
module only handles per-problem vectors (B,) on the host: α, T_c, the inverse temperatures, the fits. Those
are computed in numpy with the same expressions for every backend, so both start from identical
magnetizations and follow the same schedule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .backend import Backend
from .settings import StackSettings

# Schedule entries (sweeps × problems) computed and handed to the backend at once (64 MB of float32).
SCHEDULE_BLOCK = 1 << 24


def draw_starts(seeds: Sequence[Sequence[int]], m: int, n: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Per problem, U (m, l) then V (n, l) uniform in ±0.01 from ``SeedSequence(seed)``.

    Returns float32 arrays (B, m, l) and (B, n, l): the starting magnetizations, on every backend.
    """
    u = np.empty((len(seeds), m, rank), np.float32)
    v = np.empty((len(seeds), n, rank), np.float32)
    for b, seq in enumerate(seeds):
        rng = np.random.default_rng(np.random.SeedSequence(list(seq)))
        u[b] = rng.uniform(-0.01, 0.01, (m, rank))
        v[b] = rng.uniform(-0.01, 0.01, (n, rank))
    return u, v


def inverse_temperatures(t_crit: np.ndarray, settings: StackSettings, t_bulk: np.ndarray | None = None
                         ) -> Iterator[np.ndarray]:
    """1/T of every sweep, float32 blocks (k, B): T_k = T_0·(T_end/T_0)^(k/(sweeps-1)), T_0 = t_start·T_c.

    T_end = t_end·T_c, or with ``settings.bulk_end`` t_end·min(T_c, t_bulk): where a few large singular
    values set T_c (real weights, unlike Gaussian ones), the bulk of the modes orders far below it, and
    the anneal ends relative to the bulk's scale ``t_bulk`` instead. A problem with T_c = 0 (a constant
    residual: nothing to fit) gets 1/T = 0 and keeps its start.
    """
    sweeps, nbatch = settings.sweeps, len(t_crit)
    live = t_crit > 0
    first = t_crit * settings.t_start
    last = t_crit * settings.t_end
    if settings.bulk_end and t_bulk is not None:
        last = np.minimum(t_crit, t_bulk) * settings.t_end
    ratio = np.where(live, last / np.where(live, first, 1.0), 1.0)
    rows = max(1, SCHEDULE_BLOCK // max(nbatch, 1))
    for k0 in range(0, sweeps, rows):
        steps = np.arange(k0, min(k0 + rows, sweeps)) / max(sweeps - 1, 1)
        temp = first[None, :] * ratio[None, :] ** steps[:, None]
        yield np.where(live, 1.0 / np.where(live, temp, 1.0), 0.0).astype(np.float32)


def fit_alpha(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Least-squares α = <X, UVᵀ> / ‖UVᵀ‖² per problem, float32 (0 for an all-zero problem)."""
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0).astype(np.float32)


def solve_sign_factors(backend: Backend, x: Any, rank: int, seeds: Sequence[Sequence[int]], settings: StackSettings,
                       hessian: Any = None) -> tuple[Any, Any]:
    """Sign factors of a batch of residuals: X ≈ α U Vᵀ + row/column/constant terms.

    Args:
        backend: a :class:`~bqq.solver.backend.Backend` (numpy or torch).
        x: (B, m, n) residuals (float64; the mean under the objective is removed here).
        rank: inner dimension l.
        seeds: B integer sequences, one per problem, seeding its start.
        settings: the schedule (``restarts`` is not used here: see :func:`solve_stack`).
        hessian: None, or (B, n, n) symmetric positive definite weights H of tr((X - Xhat) H (X - Xhat)ᵀ).

    Returns:
        The backend's sign state of U and V (±1), for :meth:`sign_bits` or :func:`sign_fit_error`.
    """
    nbatch, m, n = x.shape
    if len(seeds) != nbatch:
        raise ValueError(f"{len(seeds)} seeds for {nbatch} problems")
    with backend.context():
        prob = backend.problem(x, hessian)
        rms, sigma = backend.scale_stats(prob)
        alpha = (settings.alpha_scale * rms / np.sqrt(rank)).astype(np.float32)
        t_crit = 2.0 * alpha * sigma
        # σ_max of a Gaussian matrix with this rms: the scale of the bulk of the spectrum.
        t_bulk = 2.0 * alpha * rms * (np.sqrt(m) + np.sqrt(n))
        # The U side of a wide matrix sees larger fields (sums over n > m columns) and freezes first; a
        # temperature ratio T_U / T_V = (n/m)^(2·aspect_exponent) keeps the product, hence T_c, unchanged
        # while balancing the sides (0.7 is empirical: it clearly lowered the MSE of 384×1536 groups at
        # equal sweeps when it was chosen; no committed table compares exponents, benchmarks/solver.py
        # times that shape with the default).
        aspect = np.float32((n / m) ** settings.aspect_exponent)
        u, v = backend.factors(*draw_starts(seeds, m, n, rank))
        for inv_temp in inverse_temperatures(t_crit, settings, t_bulk):
            backend.anneal(prob, u, v, alpha, inv_temp / aspect, inv_temp * aspect)
        u, v = backend.signs(u), backend.signs(v)
        _polish(backend, prob, u, v, settings.polish_rounds, settings.polish_tolerance * (m + n) * rank,
                settings.polish_each)
    return u, v


def _polish(backend: Backend, prob: Any, u: Any, v: Any, rounds: int, enough: float, each: bool) -> None:
    """Exact bit-flip descent (T = 0), α refitted each round, until a round flips at most ``enough`` bits
    per problem (or ``rounds`` rounds). ``each``: every problem stops on its own count and the rounds go on
    with the rest only, as each would alone, so a problem's codes do not depend on its batch-mates; else
    the batch stops on its total, the rule of ``compress`` and of the calibrated pass (their committed
    results were measured with it)."""
    zero = np.zeros(len(prob.xc), np.float32)
    live = np.arange(len(prob.xc))
    for _ in range(rounds):
        if not each:
            alpha = fit_alpha(*backend.fit_terms(prob.xc, u, v, prob.hessian))
            if backend.sweep(prob, u, v, alpha, zero, zero, hard=True) <= enough * len(zero):
                break
            continue
        whole = len(live) == len(zero)
        part = prob if whole else _problems(backend, prob, live)
        pu, pv = (u, v) if whole else (backend.take(u, live), backend.take(v, live))
        alpha = fit_alpha(*backend.fit_terms(part.xc, pu, pv, part.hessian))
        u0, v0 = backend.copy(pu), backend.copy(pv)
        backend.sweep(part, pu, pv, alpha, zero[:len(live)], zero[:len(live)], hard=True)
        if not whole:
            backend.put(u, live, pu)
            backend.put(v, live, pv)
        live = live[backend.changed(u0, pu) + backend.changed(v0, pv) > enough]
        if not len(live):
            break


def _problems(backend: Backend, prob: Any, idx: np.ndarray) -> Any:
    """Problems ``idx`` of a batch (a dataclass whose arrays all have the batch first)."""
    return type(prob)(**{f.name: None if getattr(prob, f.name) is None else backend.take(getattr(prob, f.name), idx)
                         for f in dataclasses.fields(prob)})


def sign_fit_error(backend: Backend, x: Any, u: Any, v: Any, hessian: Any = None) -> np.ndarray:
    """Error of the best α·U Vᵀ + constant fit per problem (B,), under H if given (picks among restarts)."""
    xc = backend.center(x, hessian)
    num, den = backend.fit_terms(xc, u, v, hessian)
    return backend.weighted_square(xc, hessian) - np.where(den > 0, num * num / np.where(den > 0, den, 1.0), 0.0)


def solve_stack(backend: Backend, residuals: Any, rank: int, seeds: Sequence[Sequence[int]], settings: StackSettings,
                hessian: Any = None) -> tuple[Any, Any]:
    """One new stack for a batch of same-shape groups: ``settings.restarts`` anneals each, the best kept.

    Args:
        residuals: (G, m, n) current residuals (float64, the backend's arrays or numpy).
        seeds: G · restarts sequences, group-major (group 0's restarts first).
        hessian: None or the groups' shared (n, n) H (the backend's array or numpy).

    Returns:
        Y (G, m, l) and Z (G, l, n) uint8 {0, 1}, contiguous, in the backend's array type.
    """
    groups, restarts = residuals.shape[0], settings.restarts
    if len(seeds) != groups * restarts:
        raise ValueError(f"{len(seeds)} seeds for {groups} groups x {restarts} restarts")
    x = backend.repeat(residuals, restarts)
    h = None if hessian is None else backend.broadcast(hessian, groups * restarts)
    u, v = solve_sign_factors(backend, x, rank, seeds, settings, h)
    if restarts > 1:
        best = sign_fit_error(backend, x, u, v, h).reshape(groups, restarts).argmin(axis=1)
        pick = np.arange(groups) * restarts + best
        u, v = backend.take(u, pick), backend.take(v, pick)
    return backend.sign_bits(u, v)
