"""`bqq.slt.convert`: replace a model's Linear/Conv2d layers by masked layers over seeded random weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from torch import nn

from ..common import as_patterns, config_from_dict, matches_any, replace_module
from .freeze import FreezeConfig, layer_ratios
from .layers import SCALES, MaskedConv2d, MaskedLayer, MaskedLinear, ThresholdGroup, masked_layers
from .masks import coat_sparsities

METHODS = ("edge_popup", "msup")
SCOPES = ("local", "global")


@dataclass(frozen=True)
class SLTConfig:
    """How a model's layers are turned into supermasked random layers.

    method: ``"edge_popup"`` (one mask, ``coats`` must be 1) or ``"msup"`` (multicoated supermask,
        ``coats`` nested masks, default 3; effective weights in {0, ±σ, …, ±Kσ}).
    sparsity: fraction of weights pruned (first coat), or the list of per-coat sparsities.
    scope: ``"local"`` (per-layer top-k) or ``"global"`` (one threshold over all masked layers).
    freeze: a :class:`FreezeConfig` (partially frozen network) or None.
    scale: ``"density"`` | ``"none"`` | ``"dynamic"`` (see :mod:`bqq.slt.layers`).
    use_abs: rank ``|score|`` (Edge-Popup, M-Sup) rather than the raw score (UGT).
    seed: the global seed; weights, scores and freezing patterns derive from (seed, layer name).
    """

    VERSION: ClassVar[int] = 1  # covers the nested FreezeConfig

    method: str = "edge_popup"
    sparsity: float | tuple[float, ...] = 0.5
    coats: int | None = None
    scope: str = "local"
    freeze: FreezeConfig | None = None
    scale: str = "density"
    use_abs: bool = True
    seed: int = 0
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        coats = self.coats if self.coats is not None or isinstance(self.sparsity, Sequence) else (
            3 if self.method == "msup" else 1)
        sparsities = coat_sparsities(self.sparsity, coats)
        if self.method == "edge_popup" and len(sparsities) != 1:
            raise ValueError(f"edge_popup uses one mask; got {len(sparsities)} coats (use method='msup')")
        if self.method == "msup" and len(sparsities) < 2:
            raise ValueError("msup needs at least 2 coats (coats=1 is edge_popup)")
        if self.freeze is not None and not isinstance(self.freeze, FreezeConfig):
            raise TypeError(f"freeze must be a bqq.slt.FreezeConfig or None, got {type(self.freeze).__name__}")
        if self.freeze is not None and len(sparsities) > 1:
            raise ValueError("freezing composes with edge_popup (one coat), not with multicoated masks")
        # Normalized, so that equal settings compare equal: one coat -> a number, several -> a tuple.
        object.__setattr__(self, "sparsity", sparsities[0] if len(sparsities) == 1 else sparsities)
        object.__setattr__(self, "coats", len(sparsities))
        object.__setattr__(self, "include", as_patterns(self.include or None, "include"))
        object.__setattr__(self, "exclude", as_patterns(self.exclude or None, "exclude"))

    @property
    def sparsities(self) -> tuple[float, ...]:
        """Per-coat sparsities s_1 < ... < s_K."""
        return self.sparsity if isinstance(self.sparsity, tuple) else (self.sparsity,)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in exported tickets)."""
        d = asdict(self)
        d["sparsity"] = list(self.sparsities)
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], version: int = 1) -> SLTConfig:
        """Inverse of :meth:`to_dict` for a config written with ``version``; ValueError if it is newer."""
        d = dict(d)
        freeze = d.pop("freeze", None)
        d["sparsity"] = tuple(d["sparsity"])
        d["include"], d["exclude"] = tuple(d.get("include", ())), tuple(d.get("exclude", ()))
        d["freeze"] = config_from_dict(FreezeConfig, freeze, version) if freeze else None
        return config_from_dict(cls, d, version)


def convert(model: nn.Module, config: SLTConfig | None = None, **settings: Any) -> nn.Module:
    """Replace every ``nn.Linear`` and ``nn.Conv2d`` of ``model`` (filtered by fnmatch ``include`` /
    ``exclude`` on qualified names) by :class:`MaskedLinear` / :class:`MaskedConv2d` in place and
    return the model. Settings are :class:`SLTConfig` fields, e.g.
    ``convert(model, method="msup", sparsity=0.5, coats=3, seed=0)``.

    The original weights are discarded (a strong lottery ticket never trains or stores them); biases
    are kept as trainable parameters. Layers are keyed by their qualified names, so the random weights
    depend only on (seed, name, shape).
    """
    if config is None:
        config = SLTConfig(**settings)
    elif settings:
        raise TypeError("pass either an SLTConfig or keyword settings, not both")
    if masked_layers(model):
        raise ValueError("the model already has masked layers; convert a fresh model")
    targets = _targets(model, config)
    if not targets:
        raise ValueError("no Linear/Conv2d layer matches include/exclude; nothing to convert")
    ratios = (layer_ratios(config.freeze, {n: tuple(m.weight.shape) for n, m in targets.items()})
              if config.freeze is not None else {})
    group = ThresholdGroup(scope="global") if config.scope == "global" else None
    for name, module in targets.items():
        new = build_layer(module, name, config, ratios.get(name), group)
        replace_module(model, name, new)
    if group is not None:
        group.validate()
    model.slt_config = config
    return model


def build_layer(module: nn.Module, name: str, config: SLTConfig, freeze: tuple[float, float] | None,
                group: ThresholdGroup | None) -> MaskedLayer:
    """A masked layer with the geometry of ``module`` (an nn.Linear or nn.Conv2d), keyed by ``name``."""
    # A module may name the random weight it shares with others (folded blocks with unshared masks).
    common = dict(seed=config.seed, key=name, weight_key=getattr(module, "slt_weight_key", None),
                  sparsity=config.sparsities, scale=config.scale, freeze=freeze,
                  use_abs=config.use_abs, group=group)
    has_bias = module.bias is not None
    if isinstance(module, nn.Linear):
        new = MaskedLinear(module.in_features, module.out_features, bias=has_bias, **common)
    elif isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise ValueError(f"layer {name!r}: padding_mode {module.padding_mode!r} is not supported (zeros only)")
        new = MaskedConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                           module.padding, module.dilation, module.groups, bias=has_bias, **common)
    else:
        raise TypeError(f"layer {name!r}: cannot mask a {type(module).__name__}")
    if has_bias:
        new.bias.data.copy_(module.bias.detach())
    device = module.weight.device
    return new.to(device) if device.type != "meta" else new


def _targets(model: nn.Module, config: SLTConfig) -> dict[str, nn.Module]:
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | nn.Conv2d) or not name:
            continue
        if (config.include and not matches_any(name, config.include)) or matches_any(name, config.exclude):
            continue
        out[name] = module
    return out

