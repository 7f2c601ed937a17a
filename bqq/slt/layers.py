"""Masked layers: frozen random weights regenerated from (seed, layer key), learnable scores, supermasks.

The effective weight is ``W_eff = sign · sigma · level`` where ``sign`` are seeded random ±1 (a signed
Kaiming constant), ``sigma = sqrt(2) / sqrt(fan_in · d)`` and ``level`` the layer's mask level (0/1, or
0..K for K coats). ``d`` is the density the weights are scaled for: ``scale="density"`` uses the
first-coat density 1 - s_1 (the fix of Edge-Popup's prune-rate/density mix-up), ``"none"`` uses 1, and
``"dynamic"`` the actual density of the current mask (the frozen-network paper's dynamic scaling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .freeze import FREE, LOCKED, PRUNED, frozen_pattern
from .masks import StraightThrough, coat_sparsities, kept_count, levels_from_keys
from .rng import layer_seed, random_normal, random_signs

SCALES = ("density", "none", "dynamic")
RELU_GAIN = math.sqrt(2.0)


class ThresholdGroup:
    """Layers ranked together: one layer (local thresholds) or every masked layer of a model (global).

    :meth:`refresh` recomputes the levels of all member layers whenever any member's scores changed
    (tracked by the tensors' version counters, so optimizer steps and state-dict loads are seen).
    ``ramp`` in [0, 1] multiplies every target sparsity (a sparsity warm-up schedule).
    """

    def __init__(self, layers: Sequence[MaskedLayer] = (), scope: str = "local") -> None:
        self.layers = list(layers)
        self.scope = scope
        self.ramp = 1.0
        self._state = None

    def validate(self) -> None:
        """Check that every coat's target is reachable given the frozen counts (prune <= s <= 1 - lock)."""
        if not self.layers:
            raise ValueError("a threshold group needs at least one layer")
        sparsities = self.layers[0].sparsities
        if any(layer.sparsities != sparsities for layer in self.layers):
            raise ValueError("layers sharing global thresholds must have the same sparsities")
        numel = sum(layer.numel for layer in self.layers)
        pruned = sum(layer.n_pruned for layer in self.layers)
        locked = sum(layer.n_locked for layer in self.layers)
        where = f"layer {self.layers[0].key!r}" if len(self.layers) == 1 else f"{len(self.layers)} layers (global)"
        for s in sparsities:
            keep = kept_count(numel, s)
            if keep < locked or keep > numel - pruned:
                raise ValueError(
                    f"{where}: sparsity {s:g} is unreachable with {pruned} pruned and {locked} locked of "
                    f"{numel} weights frozen; need prune <= sparsity <= 1 - lock")

    def refresh(self) -> None:
        state = (self.ramp, *((layer.scores.data_ptr(), layer.scores._version, layer.scores.device)
                             for layer in self.layers))
        if state == self._state:
            return
        with torch.no_grad():
            self._compute()
        self._state = state

    def _compute(self) -> None:
        layers = self.layers
        sparsities = layers[0].sparsities
        keys = [layer.ranking_keys() for layer in layers]
        flat = torch.cat(keys) if len(keys) > 1 else keys[0]
        numel = sum(layer.numel for layer in layers)
        locked = sum(layer.n_locked for layer in layers)
        pruned = sum(layer.n_pruned for layer in layers)
        keeps = [min(max(kept_count(numel, s * self.ramp) - locked, 0), numel - locked - pruned) for s in sparsities]
        levels = levels_from_keys(flat, keeps)
        for layer, part in zip(layers, torch.split(levels, [k.numel() for k in keys]), strict=True):
            layer.set_free_levels(part)


class MaskedLayer(nn.Module):
    """Shared machinery of :class:`MaskedLinear` and :class:`MaskedConv2d` (not used directly)."""

    signs: torch.Tensor
    levels: torch.Tensor
    pattern: torch.Tensor | None

    def _init_mask(self, weight_shape: tuple[int, ...], fan_in: int, *, seed: int, key: str,
                   weight_key: str | None, sparsity: float | Sequence[float], coats: int | None, scale: str,
                   freeze: tuple[float, float] | None, use_abs: bool, group: ThresholdGroup | None) -> None:
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        self.seed, self.key, self.scale, self.use_abs = int(seed), str(key), scale, bool(use_abs)
        # Layers with one weight_key share their random weights (and freezing pattern), e.g. the
        # iterations of a folded block with unshared masks; scores are always keyed by ``key``.
        self.weight_key = str(weight_key) if weight_key is not None else self.key
        self.weight_shape = tuple(weight_shape)
        self.numel = math.prod(weight_shape)
        self.fan_in = fan_in
        self.sparsities = coat_sparsities(sparsity, coats)
        self.coats = len(self.sparsities)
        density = 1.0 - self.sparsities[0] if scale == "density" else 1.0
        self.sigma = RELU_GAIN / math.sqrt(fan_in * density)
        signs = random_signs(layer_seed(self.seed, "weight", self.weight_key), self.weight_shape)
        self.register_buffer("signs", signs, persistent=False)
        self.freeze_ratios = freeze if freeze is not None and any(freeze) else None
        pattern = None
        if self.freeze_ratios is not None:
            if self.coats > 1:
                raise ValueError("freezing composes with single-coat (Edge-Popup) masks only, not coats > 1")
            pattern = frozen_pattern(self.seed, self.weight_key, self.numel, *self.freeze_ratios)
        self.register_buffer("pattern", pattern, persistent=False)
        self.n_pruned = int((pattern == PRUNED).sum()) if pattern is not None else 0
        self.n_locked = int((pattern == LOCKED).sum()) if pattern is not None else 0
        self.n_free = self.numel - self.n_pruned - self.n_locked
        std = RELU_GAIN / math.sqrt(fan_in)  # Kaiming-normal scores; their scale only sets the pace
        self.scores: nn.Parameter | None = nn.Parameter(
            std * random_normal(layer_seed(self.seed, "score", self.key), self.weight_shape))
        self.register_buffer("levels", torch.zeros(self.weight_shape, dtype=torch.uint8))
        if group is None:
            self.group = ThresholdGroup([self])
            self.group.validate()
        else:  # the caller validates once every member is in
            self.group = group
            group.layers.append(self)

    def free_mask(self) -> torch.Tensor:
        """Bool (numel,): the weights the search ranks (all of them unless some are frozen)."""
        if self.pattern is None:
            return torch.ones(self.numel, dtype=torch.bool, device=self.levels.device)
        return self.pattern.to(self.levels.device) == FREE

    @property
    def is_fixed(self) -> bool:
        """True when the mask is fixed (a loaded ticket or after :meth:`fix_mask`): no scores."""
        return self.scores is None

    def ranking_keys(self) -> torch.Tensor:
        """1-D scores of the free weights (|score| by default), the values the masks rank."""
        if not torch.isfinite(self.scores).all():
            raise FloatingPointError(f"layer {self.key!r}: scores contain NaN or Inf (learning rate too high?)")
        keys = self.scores.detach().reshape(-1)
        keys = keys.abs() if self.use_abs else keys
        return keys if self.pattern is None else keys[self.free_mask()]

    def set_free_levels(self, free_levels: torch.Tensor) -> None:
        """Write the levels of the free weights (frozen ones get 0 if pruned, 1 if locked)."""
        flat = self.levels.view(-1)
        if self.pattern is None:
            flat.copy_(free_levels)
            return
        flat.copy_((self.pattern.to(flat.device) == LOCKED).to(torch.uint8))
        flat[self.free_mask()] = free_levels

    def mask(self) -> torch.Tensor:
        """The float mask levels (weight shape); differentiable to the scores while they exist."""
        if self.is_fixed:
            return self.levels.float()
        self.group.refresh()
        ranked = self.scores.abs() if self.use_abs else self.scores
        grad_scale = torch.full((), float(self.coats), device=self.scores.device)
        if self.pattern is not None:
            grad_scale = grad_scale * self.free_mask().view(self.weight_shape).to(self.scores.dtype)
        return StraightThrough.apply(ranked, self.levels.float(), grad_scale)

    def effective_weight(self) -> torch.Tensor:
        """sign · sigma · level (weight shape), times 1/sqrt(actual density) with ``scale="dynamic"``."""
        levels = self.mask()
        weight = self.signs * (self.sigma * levels)
        if self.scale == "dynamic":
            kept = int((self.levels > 0).sum())
            weight = weight / math.sqrt(max(kept, 1) / self.numel)
        return weight

    def fix_mask(self) -> None:
        """Freeze the current masks of this layer's threshold group (every layer of the model under global
        thresholds) and drop their scores, for inference and export. Cannot be undone."""
        if self.is_fixed:
            return
        self.group.refresh()
        members, self.group.layers = self.group.layers, []
        for layer in members:
            layer.scores = None

    def density(self) -> float:
        """Fraction of weights with a nonzero level (after refreshing the mask)."""
        if not self.is_fixed:
            self.group.refresh()
        return int((self.levels > 0).sum()) / self.numel

    def slt_repr(self) -> str:
        s = ",".join(f"{v:g}" for v in self.sparsities)
        frozen = f", freeze={self.freeze_ratios}" if self.freeze_ratios else ""
        return f"sparsity=[{s}], scale={self.scale}{frozen}, key={self.key!r}, fixed={self.is_fixed}"


class MaskedLinear(MaskedLayer):
    """A Linear layer whose weight is a seeded random signed constant times a learned supermask.

    Input (..., in_features) -> output (..., out_features). Only ``scores`` (and ``bias``, if any)
    are parameters; the weight is regenerated from ``(seed, weight_key or key)``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, seed: int = 0, key: str = "",
                 weight_key: str | None = None, sparsity: float | Sequence[float] = 0.5, coats: int | None = None,
                 scale: str = "density", freeze: tuple[float, float] | None = None, use_abs: bool = True,
                 group: ThresholdGroup | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_mask((out_features, in_features), in_features, seed=seed, key=key, weight_key=weight_key,
                        sparsity=sparsity, coats=coats, scale=scale, freeze=freeze, use_abs=use_abs, group=group)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight().to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.bias is not None}, {self.slt_repr()}"


class MaskedConv2d(MaskedLayer):
    """A Conv2d layer (zero padding) with a seeded random signed-constant weight and a learned supermask.

    Input (N, in_channels, H, W) -> output (N, out_channels, H', W').
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride=1,
                 padding=0, dilation=1, groups: int = 1, bias: bool = False, *, seed: int = 0, key: str = "",
                 weight_key: str | None = None, sparsity: float | Sequence[float] = 0.5, coats: int | None = None,
                 scale: str = "density", freeze: tuple[float, float] | None = None, use_abs: bool = True,
                 group: ThresholdGroup | None = None) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels {in_channels}->{out_channels} are not divisible by groups={groups}")
        kh, kw = nn.modules.utils._pair(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        shape = (out_channels, in_channels // groups, kh, kw)
        self._init_mask(shape, shape[1] * kh * kw, seed=seed, key=key, weight_key=weight_key,
                        sparsity=sparsity, coats=coats, scale=scale, freeze=freeze, use_abs=use_abs, group=group)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.effective_weight().to(x.dtype), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, " \
               f"padding={self.padding}, bias={self.bias is not None}, {self.slt_repr()}"


def masked_layers(model: nn.Module) -> list[tuple[str, MaskedLayer]]:
    """(qualified name, layer) of every masked layer in ``model``, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MaskedLayer)]
