"""Supermask math: which weights a score tensor keeps, exactly, and the straight-through gradient.

A layer's mask is an integer *level* per weight: 0 (pruned) or 1 for an Edge-Popup mask, 0..K for a
K-coat multicoated supermask (coat i keeps the top ``1 - s_i`` of the scores, the coats are nested, so
the level is the number of coats that keep a weight). Counts are exact: a sparsity ``s`` over ``N``
weights keeps exactly ``N - round(s·N)`` of them, ties broken by index.

Frozen weights (see :mod:`bqq.slt.freeze`) are outside the search: pruned ones have level 0, locked
ones level 1, and the target sparsity counts them, as in the paper (so a layer with 50 % pruned and a
target of 70 % searches the other 20 % among its free weights).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch


def kept_count(numel: int, sparsity: float) -> int:
    """Entries kept by ``sparsity`` over ``numel`` weights: numel - round(sparsity·numel)."""
    return numel - round(sparsity * numel)


def coat_sparsities(sparsity: float | Sequence[float], coats: int | None = None) -> tuple[float, ...]:
    """Per-coat sparsities s_1 < s_2 < ... < s_K.

    A number ``s`` with ``coats = K`` gives the linear rule of the multicoated-GNN code,
    s_i = s + (i - 1)(1 - s)/K (the remaining density split into K equal slices); a sequence is
    taken as given (and ``coats``, if set, must equal its length).
    """
    if isinstance(sparsity, Sequence) and not isinstance(sparsity, str):
        values = tuple(float(s) for s in sparsity)
        if not values:
            raise ValueError("sparsity list is empty")
        if coats is not None and coats != len(values):
            raise ValueError(f"coats={coats} but {len(values)} sparsities were given")
    else:
        if not isinstance(sparsity, int | float):
            raise ValueError(f"sparsity must be a number or a list of numbers, got {sparsity!r}")
        coats = 1 if coats is None else coats
        if not isinstance(coats, int) or coats < 1:
            raise ValueError(f"coats must be a positive integer, got {coats!r}")
        values = tuple(float(sparsity) + i * (1.0 - float(sparsity)) / coats for i in range(coats))
    for s in values:
        if not 0.0 <= s < 1.0:
            raise ValueError(f"sparsity must be in [0, 1) (1 would prune every weight), got {s!r}")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"coat sparsities must increase strictly, got {list(values)}")
    return values


def top_k(keys: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask (same shape as 1-D ``keys``) of exactly the ``k`` largest keys; ties go to lower indices."""
    n = keys.numel()
    if k <= 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(keys, dtype=torch.bool)
    threshold = torch.kthvalue(keys, n - k).values
    mask = keys > threshold
    if int(mask.sum()) != k:  # ties at the threshold: fall back to a stable full ordering
        order = torch.argsort(keys, descending=True, stable=True)
        mask = torch.zeros_like(keys, dtype=torch.bool)
        mask[order[:k]] = True
    return mask


def levels_from_keys(keys: torch.Tensor, keeps: Sequence[int]) -> torch.Tensor:
    """uint8 levels: for each coat i, +1 on the ``keeps[i]`` largest keys (keeps decreasing, so nested)."""
    levels = torch.zeros(keys.shape, dtype=torch.uint8, device=keys.device)
    for k in keeps:
        levels += top_k(keys, k).to(torch.uint8)
    return levels


class StraightThrough(torch.autograd.Function):
    """Forward: the levels (a fixed float tensor). Backward: the incoming gradient times ``grad_scale``
    (the coat count, zero on frozen entries) straight to the scores, as Edge-Popup and M-Sup do."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, levels: torch.Tensor, grad_scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(grad_scale)
        return levels.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (grad_scale,) = ctx.saved_tensors
        return grad * grad_scale, None, None
