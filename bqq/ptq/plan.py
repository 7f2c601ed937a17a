"""Which layers to quantize, and with which settings.

Candidates are the modules :func:`bqq.ptq.layers.layer_kind` knows (linears and convolutions of any
class, ``transformers``' ``Conv1D``); every other module with a weight matrix is left FP with its reason.
What each layer gets comes from a :class:`bqq.QuantizeConfig`: ``include`` / ``exclude`` are fnmatch
patterns over module names, and ``overrides`` map a pattern to a :class:`bqq.LayerOverride` applied, in
order, to the layers it matches. Norms, biases, class/position tokens are never quantized. A weight
shared by several modules (a language model's ``lm_head`` tied to its token embedding) and a language
model's output embedding stay FP unless ``include`` names them; then every module that shares the
weight uses the one quantized weight.

``group_size`` means what it means in :func:`bqq.compress` (None: one group per layer; an int or
(rows, cols)), plus ``"paper"`` (the default of :func:`bqq.quantize`): square groups of the model width
(``embed_dim``, or a Hugging Face model's ``config.hidden_size``: 384 for DeiT-S and MiniLM, 768 for
DeiT-B, 96 for Swin-T), 100×96 groups for the classification head, and 384×384 without either; for an
LLM (:func:`is_llm`: a model that generates text, or one at least ``LLM_MIN_WIDTH`` wide) ``LLM_GROUP``
tiles instead, and its BQQ solves get ``LLM_SCHEDULE`` unless the user sets those options. Both were
chosen by measurement (``benchmarks/results/llm_grouping.md``, docs/llm.md): a model-width square grows
the time per weight with the width, while LLM_GROUP tiles keep it constant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from ..common import matches_any
from ..config import AUTO, KEEP, PAPER_GROUPS, LayerConfig, QuantizeConfig
from ..grouping import parse_group_shape
from .layers import WEIGHT, LayerKind, layer_kind, matrix_shape

HEAD_GROUP = (100, 96)
FALLBACK_GROUP = (384, 384)
# LLMs: the group shape and BQQ schedule of benchmarks/results/llm_grouping.md (see docs/llm.md): 250
# plain sweeps and 50 output-aware sweeps per 256² group.
LLM_GROUP = (256, 256)
LLM_SCHEDULE = {"sweep_budget": 4e4, "weighted_sweep_budget": 8e8}
LLM_MIN_WIDTH = 1024  # wider than every model with a committed "paper" table (DeiT-B: 768)
# Convolutions with at most this many inputs per output (in·kh·kw) get channel-wise UQ under "auto",
# as the paper gives Swin-T's 48-input patch embedding. With n inputs BQQ's inner dimension
# l = mn/(m+n) < n, and its 3p+1 scalars are shared by the whole group: a per-output-channel first-order
# code (each of the m rows gets its own zero point and step) fits such a layer better. 64 covers 4x4
# patches of up to 4 channels and 8x8 patches of one, and leaves every 16x16 ViT patch embedding (768) alone.
FEW_INPUTS = 64
# Under the default "paper" grouping, convolutions give their first-order candidates one group (one zero
# point and step, or one set of BCQ scales) per output channel, as CNN practice does; BQQ keeps its tiles
# (a single row is no matrix to factor). Chosen by measurement on EfficientNet-Lite0's real weights:
# benchmarks/results/ptq_cnn_ablation.md compares per-channel groups with tiles.
CNN_CHANNEL_GROUPS = True
PER_CHANNEL_METHODS = ("uq", "bcq", "gptq")


@dataclass(frozen=True)
class LayerPlan:
    """How one layer is quantized."""

    name: str
    kind: LayerKind
    shape: tuple[int, int]  # the weight as a matrix (out, in[·kh·kw])
    method: str
    bits: float
    group_shape: tuple[int, int]
    opts: dict[str, Any] = field(default_factory=dict)  # fields of the method's config
    patch_rule: bool = False  # "auto" gave this layer channel-wise UQ (FEW_INPUTS); with data GPTQ competes
    shared_with: tuple[str, ...] = ()  # other modules whose weight is this very tensor (they get the same Ŵ)
    channel_groups: bool = False  # first-order codes get one group per output channel (CNN_CHANNEL_GROUPS)

    def groups_for(self, method: str) -> tuple[int, int]:
        """The group shape of ``method``'s candidate for this layer."""
        if self.channel_groups and method in PER_CHANNEL_METHODS:
            return 1, self.shape[1]
        return self.group_shape


def plan_layers(model: nn.Module, config: QuantizeConfig) -> tuple[list[LayerPlan], dict[str, str]]:
    """The layers of ``model`` to quantize under ``config``, in module order, and every other module with
    a weight matrix mapped to the reason it stays FP."""
    include, exclude = config.include, config.exclude
    plans, skipped, matched = [], {}, set()
    owners = weight_owners(model)
    output_embedding = output_embedding_name(model)
    base = config.layer
    if is_llm(model) and base.method in ("bqq", AUTO):
        base = replace(base, options={**LLM_SCHEDULE, **base.options})  # the user's options win
    for name, module, parent in _named_with_parents(model):
        kind = layer_kind(module, parent)
        if not name and isinstance(kind, LayerKind):  # the root: a bare layer cannot replace itself
            raise ValueError("quantize() replaces submodules; wrap a bare layer, e.g. nn.Sequential(layer)")
        if not isinstance(kind, LayerKind):
            if kind:
                skipped[name] = kind
            continue
        reason = _left_out(name, include, exclude)
        tied = tuple(n for n in owners.get(id(module.weight), ()) if n != name)
        if not reason and (tied or name == output_embedding) and not (include and matches_any(name, include)):
            reason = (f"weight tied to {', '.join(tied)}" if tied else "output embedding of a language model")
            reason += "; kept FP unless include= names it"
        if reason:
            skipped[name] = reason
            continue
        if tied:  # every module that holds the tensor reads the one quantized weight
            kind = LayerKind(WEIGHT, kind.transposed, kind.hessian)
        plans.append(_plan(model, name, module, kind, base, config, matched, tied))
    unused = sorted(set(config.overrides) - matched)
    if unused:
        raise ValueError(f"overrides {unused} match no quantizable layer")
    if not plans:
        raise ValueError("no linear or convolution layer matches include/exclude; nothing to quantize "
                         f"(left FP: {dict(list(skipped.items())[:5])})")
    return plans, skipped


def _plan(model: nn.Module, name: str, module: nn.Module, kind: LayerKind, base: LayerConfig,
          config: QuantizeConfig, matched: set[str], tied: tuple[str, ...]) -> LayerPlan:
    """One layer's plan: ``base`` under the overrides that match ``name`` (recorded in ``matched``)."""
    shape = matrix_shape(module, kind)
    try:
        layer, patterns = config.layer_config(name, base)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"layer {name!r}: {exc}") from exc
    matched.update(patterns)
    grouped_by_user = any(config.overrides[p].group_size is not KEEP for p in patterns)
    conv = isinstance(module, nn.modules.conv._ConvNd)
    plan = LayerPlan(name, kind, shape, layer.method, layer.bits,
                     _group_shape(model, name, shape, layer.group_size), dict(layer.options), shared_with=tied,
                     channel_groups=CNN_CHANNEL_GROUPS and conv and _is_paper(layer.group_size))
    if plan.method == AUTO and conv and shape[1] <= FEW_INPUTS:
        plan = replace(plan, method="uq", opts={}, patch_rule=True,  # the patch-embedding rule
                       group_shape=plan.group_shape if grouped_by_user else (1, shape[1]))
    return plan


def _is_paper(group_size) -> bool:
    return isinstance(group_size, str) and group_size == PAPER_GROUPS


def _left_out(name: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> str:
    if include and not matches_any(name, include):
        return "not matched by include="
    if matches_any(name, exclude):
        return "matched by exclude="
    return ""


def _named_with_parents(model: nn.Module):
    """(name, module, parent) for every module of ``model`` (the root's parent is None)."""
    parents: dict[int, nn.Module] = {}
    for parent in model.modules():
        for child in parent.children():
            parents.setdefault(id(child), parent)
    for name, module in model.named_modules():  # pre-order: the order layers are declared in
        yield name, module, parents.get(id(module))


def weight_owners(model: nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> the names of the modules that hold it (more than one: a tied weight)."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for p in module._parameters.values():
            if p is not None and name not in owners.setdefault(id(p), []):
                owners[id(p)].append(name)
    return owners


def output_embedding_name(model: nn.Module) -> str | None:
    """The module name of a Hugging Face language model's output embedding (``lm_head``), if it has one."""
    getter = getattr(model, "get_output_embeddings", None)
    try:
        head = getter() if callable(getter) else None
    except (AttributeError, NotImplementedError, TypeError):
        return None
    if not isinstance(head, nn.Module):
        return None
    return next((name for name, m in model.named_modules() if m is head), None)


def classifier_name(model: nn.Module) -> str | None:
    """The head's module name from a timm-style config (``pretrained_cfg['classifier']``), if any."""
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, Mapping) and isinstance(cfg.get("classifier"), str):
            return cfg["classifier"]
    return None


def model_width(model: nn.Module) -> int | None:
    """The model width: ``embed_dim`` (timm), or a Hugging Face config's ``hidden_size``; None if neither."""
    width = getattr(model, "embed_dim", None)
    if width is None:  # Hugging Face models keep the width in their config
        width = getattr(getattr(model, "config", None), "hidden_size", None)
    return width if isinstance(width, int) and not isinstance(width, bool) and width > 0 else None


def is_llm(model: nn.Module) -> bool:
    """Whether ``model`` gets the LLM grouping and schedule: a model that generates text (a Hugging Face
    ``can_generate()`` model: ``*ForCausalLM``, seq2seq) or one at least ``LLM_MIN_WIDTH`` wide."""
    width = model_width(model)
    if width is not None and width >= LLM_MIN_WIDTH:
        return True
    can_generate = getattr(model, "can_generate", None)
    try:
        return bool(can_generate()) if callable(can_generate) else False
    except (TypeError, AttributeError, NotImplementedError):
        return False


def _group_shape(model: nn.Module, name: str, shape: tuple[int, int], group_size) -> tuple[int, int]:
    if not (isinstance(group_size, str) and group_size == PAPER_GROUPS):
        return parse_group_shape(group_size, shape)
    if name == classifier_name(model):
        return parse_group_shape(HEAD_GROUP, shape)
    if is_llm(model):
        return parse_group_shape(LLM_GROUP, shape)
    width = model_width(model)
    return parse_group_shape(width if width is not None else FALLBACK_GROUP, shape)
