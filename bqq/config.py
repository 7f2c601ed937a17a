"""Configuration objects of :func:`bqq.quantize`: what to do to each layer, and how to run.

    config = bqq.QuantizeConfig(
        layer=bqq.LayerConfig(method="bqq", bits=2, group_size="paper", options={"rank_scale": 1.5}),
        overrides={"head": bqq.LayerOverride(bits=4), "blocks.0.*": bqq.LayerOverride(method="uq")},
        exclude=("patch_embed.*",))
    bqq.quantize(model, config, run=bqq.RunConfig(workers=4, cache_dir="cache"))

:class:`QuantizeConfig` decides the result (the same config and seed give the same codes) and is saved with
the model in its versioned form (:meth:`QuantizeConfig.to_dict`); :class:`RunConfig` decides where and how
fast the work runs (only its ``device`` moves codes, at rounding level: CPU and GPU arithmetic differ).
The keyword form ``bqq.quantize(model, bits=2, overrides={"head": {"bits": 4}})`` is shorthand for
:meth:`QuantizeConfig.from_kwargs` and :class:`RunConfig` with the same names.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import numpy as np
import torch

from .api import check_bits
from .common import as_patterns, check_seed, config_from_dict, is_int, is_number, make_config, matches_any
from .methods import available_methods, get_method

AUTO = "auto"  # per layer, the candidate with the lowest error (bqq.ptq.quantize.CANDIDATES)
PAPER_GROUPS = "paper"  # the paper's groupings, chosen per model (bqq.ptq.plan)
GroupSize = int | tuple[int, int] | str | None


class _Keep:
    """The value of a :class:`LayerOverride` field that the override leaves as it is."""

    def __repr__(self) -> str:
        return "KEEP"

    def __reduce__(self) -> str:
        return "KEEP"  # one instance, also after pickling or deepcopy


KEEP: Any = _Keep()


def _method(value: Any) -> str:
    if value != AUTO and value not in available_methods():
        raise ValueError(f"unknown method {value!r}; available: 'auto' and {available_methods()}")
    return value


def _bits(value: Any) -> float:
    """``value`` as a Python number (numpy scalars too: the config is saved as JSON)."""
    if isinstance(value, bool) or not is_number(value):
        raise ValueError(f"bits must be a number, got {value!r}")
    return int(value) if isinstance(value, np.integer) else float(value) if isinstance(value, np.floating) else value


def _group_size(value: Any) -> GroupSize:
    """None (one group per layer), an int (squares), (rows, cols) or ``"paper"``; lists become tuples."""
    if value is None or value == PAPER_GROUPS or (is_int(value) and value > 0):
        return value
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 and all(
            is_int(v) and v > 0 for v in value):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"group_size must be None, a positive int, (rows, cols) or 'paper', got {value!r}")


def _options(method: str, options: Any) -> dict[str, Any]:
    """A copy of ``options``, checked against the fields of ``method``'s config (BQQ's under ``"auto"``)."""
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise ValueError(f"options must map option names to values, got {options!r}")
    options = dict(options)
    owner = "bqq" if method == AUTO else method
    make_config(get_method(owner).config_class, options, f"method {owner!r}")  # TypeError naming the valid ones
    return options


@dataclass(frozen=True)
class LayerConfig:
    """How a layer is quantized (versioned with :class:`QuantizeConfig`, which holds it).

    method: a registered method (``bqq.available_methods()``) or ``"auto"`` (per layer, the lowest error
        among BQQ and the first-order codes at the same bits; with calibration data also GPTQ).
    bits: what it counts depends on the method (``bqq.methods.bits_meanings()``): stacks for BQQ.
    group_size: None (one group per layer), an int (squares), (rows, cols), or ``"paper"`` (per model:
        see :mod:`bqq.ptq.plan`).
    options: fields of the method's config dataclass, e.g. ``{"rank_scale": 1.5}`` for BQQ; under
        ``"auto"`` they go to BQQ.
    """

    VERSION: ClassVar[int] = 1  # moves with QuantizeConfig.VERSION

    method: str = AUTO
    bits: float = 2
    group_size: GroupSize = PAPER_GROUPS
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", _method(self.method))
        object.__setattr__(self, "bits", _bits(self.bits))
        object.__setattr__(self, "group_size", _group_size(self.group_size))
        object.__setattr__(self, "options", _options(self.method, self.options))
        if self.method != AUTO:  # "auto"'s candidates are checked per layer (bqq.ptq.quantize)
            check_bits(get_method(self.method), self.bits)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "bits": self.bits, "group_size": _json_group(self.group_size),
                "options": dict(self.options)}


@dataclass(frozen=True)
class LayerOverride:
    """The fields of a :class:`LayerConfig` that differ for the layers a pattern matches; the others
    (:data:`KEEP`) stay. ``options`` add to the inherited ones, unless ``method`` changes: options belong to
    a method, so then only the override's own apply. ``group_size="paper"`` is for the whole model only."""

    VERSION: ClassVar[int] = 1  # moves with QuantizeConfig.VERSION

    method: str = KEEP
    bits: float = KEEP
    group_size: GroupSize = KEEP
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method is not KEEP:
            object.__setattr__(self, "method", _method(self.method))
        if self.bits is not KEEP:
            object.__setattr__(self, "bits", _bits(self.bits))
        if self.group_size is not KEEP:
            if self.group_size == PAPER_GROUPS:
                raise ValueError("group_size='paper' applies to the whole model, not to an override")
            object.__setattr__(self, "group_size", _group_size(self.group_size))
        if not isinstance(self.options, Mapping) or not all(isinstance(k, str) for k in self.options):
            raise ValueError(f"options must map option names to values, got {self.options!r}")
        object.__setattr__(self, "options", dict(self.options))  # checked against the method in apply_to

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> LayerOverride:
        """The override of the keyword form's ``{"bits": 4, "rank_scale": 1.5}``: ``method``, ``bits`` and
        ``group_size`` are fields, every other key a method option."""
        if isinstance(settings, LayerOverride):
            return settings
        if not isinstance(settings, Mapping):
            raise ValueError(f"an override must be a LayerOverride or a dict of settings, got {settings!r}")
        own = {k: settings[k] for k in ("method", "bits", "group_size") if k in settings}
        return cls(**own, options={k: v for k, v in settings.items() if k not in own})

    def apply_to(self, layer: LayerConfig) -> LayerConfig:
        """``layer`` with this override's fields; ValueError/TypeError for options the method lacks."""
        method = layer.method if self.method is KEEP else self.method
        options = {**layer.options, **self.options} if method == layer.method else dict(self.options)
        changes = {k: getattr(self, k) for k in ("bits", "group_size") if getattr(self, k) is not KEEP}
        return replace(layer, method=method, options=options, **changes)

    def to_dict(self) -> dict[str, Any]:
        kept = {k: getattr(self, k) for k in ("method", "bits") if getattr(self, k) is not KEEP}
        if self.group_size is not KEEP:
            kept["group_size"] = _json_group(self.group_size)
        return {**kept, "options": dict(self.options)}


@dataclass(frozen=True)
class QuantizeConfig:
    """What :func:`bqq.quantize` does to a model.

    layer: the :class:`LayerConfig` of every layer.
    overrides: fnmatch pattern -> :class:`LayerOverride` (or the keyword form's dict), applied in order
        to the layers each matches; a pattern that matches no layer is an error.
    include / exclude: fnmatch patterns over module names; only layers ``include`` matches (all if empty)
        and ``exclude`` does not are quantized.
    fold_bn: first fold inference-time BatchNorms into the convolutions before them.
    seed: every layer's seed derives from it and the layer's name.
    """

    VERSION: ClassVar[int] = 1  # covers the nested LayerConfig and LayerOverride

    layer: LayerConfig = field(default_factory=LayerConfig)
    overrides: Mapping[str, LayerOverride] = field(default_factory=dict)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    fold_bn: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.layer, LayerConfig):
            raise TypeError(f"layer must be a bqq.LayerConfig, got {type(self.layer).__name__}")
        if not isinstance(self.overrides, Mapping) or not all(isinstance(p, str) for p in self.overrides):
            raise ValueError(f"overrides must map fnmatch patterns to overrides, got {self.overrides!r}")
        overrides = {p: LayerOverride.from_settings(s) for p, s in self.overrides.items()}
        object.__setattr__(self, "overrides", overrides)
        object.__setattr__(self, "include", as_patterns(self.include or None, "include"))
        object.__setattr__(self, "exclude", as_patterns(self.exclude or None, "exclude"))
        if not isinstance(self.fold_bn, bool):
            raise ValueError(f"fold_bn must be True or False, got {self.fold_bn!r}")
        check_seed(self.seed)

    @classmethod
    def from_kwargs(cls, bits: float = 2, *, method: str = AUTO, group_size: GroupSize = PAPER_GROUPS,
                    include: str | Sequence[str] | None = None, exclude: str | Sequence[str] | None = None,
                    overrides: Mapping[str, Mapping[str, Any] | LayerOverride] | None = None, seed: int = 0,
                    fold_bn: bool = True, **options: Any) -> QuantizeConfig:
        """The config of the keyword form ``bqq.quantize(model, bits=..., method=..., ..., **options)``."""
        return cls(LayerConfig(method, bits, group_size, options), dict(overrides or {}),
                   as_patterns(include, "include"), as_patterns(exclude, "exclude"), fold_bn, seed)

    def layer_config(self, name: str, base: LayerConfig | None = None) -> tuple[LayerConfig, list[str]]:
        """The config of layer ``name``: ``base`` (default :attr:`layer`) after every override whose pattern
        matches the name, and those patterns."""
        layer, matched = base or self.layer, []
        for pattern, override in self.overrides.items():
            if matches_any(name, (pattern,)):
                layer = override.apply_to(layer)
                matched.append(pattern)
        return layer, matched

    def to_dict(self) -> dict[str, Any]:
        """The JSON form saved with a quantized model (overrides as ordered [pattern, override] pairs)."""
        return {"version": self.VERSION, "layer": self.layer.to_dict(),
                "overrides": [[p, o.to_dict()] for p, o in self.overrides.items()],
                "include": list(self.include), "exclude": list(self.exclude), "fold_bn": self.fold_bn,
                "seed": self.seed}

    @classmethod
    def from_dict(cls, data: Any) -> QuantizeConfig:
        """Rebuild a config from :meth:`to_dict`'s form; ValueError for a newer version or unknown fields."""
        if not isinstance(data, Mapping):
            raise ValueError(f"QuantizeConfig must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("version", None)
        layer, pairs = data.pop("layer", None), data.pop("overrides", [])
        config = config_from_dict(cls, data, version)  # the version and the top-level fields first
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise ValueError(f"QuantizeConfig overrides must be a list of [pattern, override] pairs, got {pairs!r}")
        return replace(config, layer=config.layer if layer is None else config_from_dict(LayerConfig, layer, version),
                       overrides={p: config_from_dict(LayerOverride, o, version) for p, o in pairs})


@dataclass(frozen=True)
class RunConfig:
    """How :func:`bqq.quantize` runs: workers, cache and progress never change the codes; the device
    changes them at rounding level (CPU and GPU codes differ, with the same error on average).

    workers: None (this process: data-free groups side by side, one thread per core), 1 (one group at a
        time on all cores), a number of local processes, or a ``concurrent.futures.Executor`` (e.g. Dask's).
    cache_dir: persist each finished group there; a rerun with the same config resumes.
    progress: tqdm bars (None: only on a terminal).
    device: where the BQQ solver runs: None (the model's device), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """

    workers: int | cf.Executor | None = None
    cache_dir: str | os.PathLike | None = None
    progress: bool | None = None
    device: str | torch.device | None = None

    def __post_init__(self) -> None:
        w = self.workers
        if not (w is None or isinstance(w, cf.Executor) or (is_int(w) and not isinstance(w, bool) and w >= 1)):
            raise ValueError(f"workers must be None, a positive int or a concurrent.futures.Executor, got {w!r}")
        if self.cache_dir is not None and not isinstance(self.cache_dir, (str, os.PathLike)):
            raise ValueError(f"cache_dir must be a path or None, got {self.cache_dir!r}")
        if self.progress not in (None, True, False):
            raise ValueError(f"progress must be None, True or False, got {self.progress!r}")
        if self.device is not None and not isinstance(self.device, (str, torch.device)):
            raise ValueError(f"device must be None, a string or a torch.device, got {self.device!r}")


RUN_FIELDS = tuple(f.name for f in fields(RunConfig))


def _json_group(group_size: GroupSize) -> Any:
    return list(group_size) if isinstance(group_size, tuple) else group_size
