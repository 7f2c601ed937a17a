"""Partially frozen random networks (Otsuka et al., TMLR 2025): a seeded random subset of each layer's
weights is permanently pruned or locked into the ticket, and the mask search runs over the rest.

Per-layer ratios follow a layer rule: ``uniform`` (every layer gets the global ratios) or ``erk``
(Erdős–Rényi-Kernel densities, as in the paper's ``sparsity_distribution``: frozen_l from the density
1 - (prune + lock), prune_l from the density 1 - prune, lock_l = frozen_l - prune_l).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .rng import layer_seed, permutation

PRUNED, FREE, LOCKED = -1, 0, 1
LAYER_RULES = ("uniform", "erk")


@dataclass(frozen=True)
class FreezeConfig:
    """Freeze ``prune + lock`` of the weights: ``prune`` of them pruned (mask 0) and ``lock`` kept (mask 1)."""

    VERSION: ClassVar[int] = 1

    prune: float = 0.0
    lock: float = 0.0
    rule: str = "uniform"

    def __post_init__(self) -> None:
        for label, value in (("prune", self.prune), ("lock", self.lock)):
            if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"freeze {label} ratio must be in [0, 1], got {value!r}")
        if self.prune + self.lock > 1.0:
            raise ValueError(f"freeze prune + lock = {self.prune + self.lock:g} exceeds 1")
        if self.rule not in LAYER_RULES:
            raise ValueError(f"freeze rule must be one of {LAYER_RULES}, got {self.rule!r}")

    @property
    def ratio(self) -> float:
        """The frozen fraction prune + lock."""
        return self.prune + self.lock


def layer_ratios(config: FreezeConfig, shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[float, float]]:
    """Per-layer (prune_l, lock_l) for weight ``shapes`` (name -> (out, in[, kh, kw]))."""
    if config.rule == "uniform":
        return {name: (config.prune, config.lock) for name in shapes}
    frozen_density = erk_densities(shapes, 1.0 - config.ratio)
    prune_density = erk_densities(shapes, 1.0 - config.prune)
    out = {}
    for name in shapes:
        prune_l = 1.0 - prune_density[name]
        lock_l = (1.0 - frozen_density[name]) - prune_l
        if lock_l < -1e-9 or prune_l < -1e-9:
            raise ValueError(f"ERK gives layer {name!r} negative ratios (prune {prune_l:g}, lock {lock_l:g})")
        out[name] = (max(prune_l, 0.0), max(lock_l, 0.0))
    return out


def erk_densities(shapes: Mapping[str, Sequence[int]], density: float) -> dict[str, float]:
    """Erdős–Rényi-Kernel layer densities averaging ``density`` over all weights.

    A layer's raw density is sum(shape) / prod(shape); layers whose scaled density would exceed 1 are
    made dense and the rest rescaled, until every density is at most 1.
    """
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density!r}")
    numel = {n: float(np.prod(s)) for n, s in shapes.items()}
    raw = {n: float(np.sum(s)) / numel[n] for n, s in shapes.items()}
    total = sum(numel.values())
    dense: set[str] = set()
    while True:
        budget = density * total - sum(numel[n] for n in dense)
        rest = [n for n in shapes if n not in dense]
        weighted = sum(raw[n] * numel[n] for n in rest)
        eps = budget / weighted if weighted > 0 else 0.0
        over = [n for n in rest if raw[n] * eps > 1.0]
        if not over:
            return {n: 1.0 if n in dense else raw[n] * eps for n in shapes}
        dense.add(max(over, key=lambda n: raw[n]))


def frozen_pattern(seed: int, name: str, numel: int, prune: float, lock: float) -> torch.Tensor:
    """int8 tensor (numel,): PRUNED for round(numel·prune) random entries, LOCKED for the next
    round(numel·lock), FREE elsewhere; regenerated from (seed, name) alone."""
    n_prune, n_lock = round(numel * prune), round(numel * lock)
    if n_prune + n_lock > numel:
        n_lock = numel - n_prune
    order = permutation(layer_seed(seed, "freeze", name), numel)
    pattern = np.zeros(numel, np.int8)
    pattern[order[:n_prune]] = PRUNED
    pattern[order[n_prune:n_prune + n_lock]] = LOCKED
    return torch.from_numpy(pattern)
