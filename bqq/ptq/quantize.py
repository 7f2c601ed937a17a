"""`bqq.quantize(model, bits=2)`: quantize a model's linear and convolution weights in place."""

from __future__ import annotations

import copy
import logging
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..api import method_config
from ..common import dtype_name, progress_bar, replace_module
from ..config import AUTO, RUN_FIELDS, QuantizeConfig, RunConfig
from ..grouping import GroupGrid
from ..methods import get_method
from ..methods.bqq import BQQConfig
from ..quantized import QuantizedMatrix
from ..solver.devices import solver_device
from ..solver.hessian_math import channel_scale, damped, lower_cholesky, prepare_hessian, solve_with_factor
from . import families
from .blocks import BlockStack, block_pass, capture_inputs, chain_check, find_stack, without_cache
from .calibrate import Calibration, calibrate, tunable_parameters
from .fold import fold_batchnorm
from .hessian import collect_cross_moments, collect_hessians, first_batch, input_stages, run_model
from .layers import CONV2D, LINEAR, LINEAR_T, weight_matrix
from .modules import QuantizedConv2d, QuantizedLinear, QuantizedWeight
from .plan import LayerPlan, plan_layers
from .report import coverage_report, format_coverage, format_report, layer_report, record_left_fp
from .runner import GroupJob, layer_seed, run_jobs

# The methods "auto" chooses among, in order of preference on equal error: BQQ and the first-order
# codes it claims to beat, all at the same bits (stacks / code width); with calibration data also GPTQ
# (UQ codes rounded against H), the data-aware first-order baseline.
CANDIDATES = ("bqq", "uq", "bcq")
CALIBRATED_CANDIDATES = ("gptq",)
log = logging.getLogger("bqq")


def quantize(model: nn.Module, config: QuantizeConfig | float | None = None, *,
             calibration: Calibration | Iterable[Any] | None = None, run: RunConfig | None = None,
             **shorthand: Any) -> nn.Module:
    """Quantize ``model``'s weights in place (weight-only PTQ) and return it.

    Every linear and convolution layer that ``config`` selects gets one grouped
    :class:`~bqq.quantized.QuantizedMatrix` as its weight and computes what its module computed with it
    (:mod:`bqq.ptq.layers`: plain ``nn.Linear`` / ``nn.Conv2d`` and ``transformers``' ``Conv1D`` become
    :class:`QuantizedLinear` / :class:`QuantizedConv2d`; any other keeps its module and ``forward`` with a
    :class:`~bqq.ptq.modules.QuantizedWeight`); biases, norms, tokens, embeddings and by default tied
    weights and a language model's output embedding stay in floating point, each reported with its reason
    (:func:`bqq.ptq.report.coverage_report`). Layer ``name``'s weight equals
    ``bqq.compress(W, bits, method=..., group_size=..., seed=bqq.ptq.runner.layer_seed(seed, name))``.
    The config is kept as ``model.bqq_config`` and saved with the model.

    Args:
        config: a :class:`bqq.QuantizeConfig` (what to do per layer: method, bits, groups, options,
            overrides by pattern, include/exclude, BatchNorm folding, seed); a number is ``bits``; None
            builds it from ``shorthand``.
        calibration: None for data-free PTQ; a DataLoader of calibration batches (or a
            :class:`Calibration` for its settings): each layer is then solved under its output error
            over its calibration inputs (BQQ and GPTQ; ``"auto"`` adds GPTQ to its candidates and
            compares them by that error), by default layer after layer in forward order, each fitting
            the FP model's outputs from the inputs the already-quantized layers give it
            (``Calibration.inputs``); with ``Calibration(epochs=k)`` biases and norms are then tuned for
            k epochs (c-BQQ).
        run: a :class:`bqq.RunConfig` (workers, cache_dir, progress, device): where and how fast (only the
            device moves codes, at rounding level). With processes or an executor as workers a calibrated
            BQQ layer spreads its groups too (its column blocks in order here, the groups of each block on
            the workers, same codes).
            On a GPU all BQQ groups of one shape, across all layers, are solved together.
        **shorthand: the keyword form: the arguments of :meth:`bqq.QuantizeConfig.from_kwargs` (``bits``,
            ``method``, ``group_size``, ``include``, ``exclude``, ``overrides``, ``seed``, ``fold_bn`` and
            method options such as ``rank_scale=1.5``) and the fields of :class:`bqq.RunConfig`; they
            build the same objects.

    Under ``"auto"`` (the default method) a layer gets whichever of BQQ (``bits`` stacks), UQ and BCQ
    (``bits``-bit codes) has the lowest relative error, and convolutions with at most
    :data:`bqq.ptq.plan.FEW_INPUTS` inputs per output (small patch embeddings) get channel-wise UQ, the
    paper's rule; overrides win. With ``fold_bn`` every inference-time BatchNorm is first folded into the
    convolution it follows (:func:`bqq.ptq.fold_batchnorm`), found by one forward on the first
    calibration batch or on a random input of a timm model's ``pretrained_cfg["input_size"]``; without
    either, a warning says how to fold.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    config, run = resolve_configs(config, run, shorthand)
    if calibration is not None and not isinstance(calibration, Calibration):
        calibration = Calibration(calibration)
    plans, left_fp = plan_layers(model, config)
    aware = calibration is not None and calibration.output_aware
    for plan in plans:
        _validate(plan, aware)
    tune = calibration is not None and calibration.epochs > 0
    if tune and not tunable_parameters(model):
        raise ValueError("Calibration(epochs > 0) tunes biases and normalization parameters, and this model has "
                         "none; set epochs=0")
    if config.fold_bn:
        _fold_batchnorms(model, calibration)
    teacher = copy.deepcopy(model) if tune else None
    device = run.device if run.device is not None else next((p.device for p in model.parameters()), None)
    jobs = {"workers": run.workers, "cache_dir": run.cache_dir, "progress": run.progress,
            "device": solver_device(device)}
    if not aware:
        _quantize_layers(model, plans, {}, config.seed, jobs)
    else:
        teacher = _calibrated_pass(model, plans, calibration, teacher, config.seed, jobs, run.progress)
    if tune:
        calibrate(model, teacher, calibration, progress=run.progress)
    record_left_fp(model, left_fp)
    model.bqq_config = config
    _log_coverage(model)
    families.finish(model)  # e.g. bqq.hf: a transformers model's save_pretrained then writes the packed weights
    return model


def resolve_configs(config: QuantizeConfig | float | None, run: RunConfig | None, shorthand: dict[str, Any]
                    ) -> tuple[QuantizeConfig, RunConfig]:
    """The two config objects of a :func:`quantize` call, from objects or the keyword form (not both)."""
    run_kwargs = {k: shorthand.pop(k) for k in RUN_FIELDS if k in shorthand}
    if run is None:
        run = RunConfig(**run_kwargs)
    elif not isinstance(run, RunConfig):
        raise TypeError(f"run must be a bqq.RunConfig, got {type(run).__name__}")
    elif run_kwargs:
        raise TypeError(f"pass run=RunConfig(...) or the keywords {sorted(run_kwargs)}, not both")
    if isinstance(config, QuantizeConfig):
        if shorthand:
            raise TypeError(f"pass a QuantizeConfig or the keywords {sorted(shorthand)}, not both")
        return config, run
    if config is not None:
        if "bits" in shorthand:
            raise TypeError("bits given twice (as the second argument and as bits=)")
        if isinstance(config, bool) or not isinstance(config, (int, float)):
            raise TypeError(f"config must be a bqq.QuantizeConfig or a number of bits, got {type(config).__name__}")
        shorthand["bits"] = config
    return QuantizeConfig.from_kwargs(**shorthand), run


def _calibrated_pass(model: nn.Module, plans: list[LayerPlan], calibration: Calibration, teacher: nn.Module | None,
                     seed: int, run: dict[str, Any], progress: bool | None) -> nn.Module | None:
    """Solve every planned layer under its output error, stage after stage: block by block for a model
    made of a stack of blocks (:mod:`bqq.ptq.blocks`), else each stage's statistics from a forward of the
    whole model. Returns the FP teacher if one was made (c-BQQ reuses it)."""
    mode, data = calibration.inputs, calibration.data
    batch = first_batch(data)  # fails now on empty data, before any work
    names = [plan.name for plan in plans]
    by_name = {plan.name: plan for plan in plans}
    stack = find_stack(model, names) if calibration.blockwise else None
    order = None
    if stack is not None:
        with chain_check(stack) as chained:
            order = input_stages(model, names, without_cache(model, batch))
        outside = [stage for stage in order if any(stack.owner(n) is None for n in stage)]
        mixed = any(stack.owner(n) is not None for stage in outside for n in stage)
        if not chained() or mixed or (mode == "float" and outside):  # float with outside layers: one pass
            stack = None
    solve = _stage_solver(model, mode, seed, run)
    if stack is None:  # the whole-model pass
        stages = [names] if mode == "float" else order or input_stages(model, names, batch)
        if mode == "corrected" and teacher is None:
            teacher = copy.deepcopy(model)
        for stage in progress_bar(stages, progress=progress if len(stages) > 1 else False, desc="stages",
                                  unit="stage"):
            solve([by_name[n] for n in stage], model, teacher, "", data)
        return teacher
    before = _stages_before(order, stack)
    after = [stage for stage in outside if stage not in before]
    inside = [[by_name[n] for n in stage] for stage in order if stage not in outside]
    if mode == "float":  # all of a block's layers in one stage: their statistics come from the FP stream
        merged: dict[int | None, list[LayerPlan]] = {}
        for stage in inside:
            merged.setdefault(stack.owner(stage[0].name), []).extend(stage)
        inside = list(merged.values())
    if mode == "corrected" and outside and teacher is None:
        teacher = copy.deepcopy(model)  # the layers outside the stack fit the FP model's outputs
    fp_stream = capture_inputs(model, stack, data)
    for stage in before:
        solve([by_name[n] for n in stage], model, teacher, "", data)
    q_stream = capture_inputs(model, stack, data) if before else fp_stream
    block_pass(stack, inside, mode, fp_stream, q_stream, solve, calibration.device, progress)
    del fp_stream, q_stream
    for stage in after:
        solve([by_name[n] for n in stage], model, teacher, "", data)
    return teacher


def _stages_before(stages: list[list[str]], stack: BlockStack) -> list[list[str]]:
    """The stages of layers outside ``stack`` that the forward reaches before the stack's first layer."""
    before = []
    for stage in stages:
        if any(stack.owner(n) is not None for n in stage):
            break
        before.append(stage)
    return before


def _stage_solver(model: nn.Module, mode: str, seed: int, run: dict[str, Any]):
    """The function that solves one stage of ``model``: statistics of its layers from ``root`` (the model,
    or a block whose layer names drop ``prefix``) on ``data`` (with ``mode="corrected"`` also from
    ``fp_root`` on ``fp_data``, default the same batches), then the solve and the swap
    (:func:`_quantize_layers`)."""

    def solve(stage: list[LayerPlan], root: nn.Module, fp_root: nn.Module | None, prefix: str, data: Iterable[Any],
              fp_data: Iterable[Any] | None = None, forward=None) -> None:
        hessians, targets = _stage_statistics(root, fp_root, stage, prefix, mode, data, fp_data, forward)
        _quantize_layers(model, stage, hessians, seed, run, targets)

    return solve


def _fold_batchnorms(model: nn.Module, calibration: Calibration | None) -> None:
    if getattr(model, "bqq_batchnorm_folded", False):  # bqq.ptq.fold_batchnorm ran: what folds is folded
        return
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if calibration is not None:
        batch = first_batch(calibration.data)
        folded = fold_batchnorm(model, lambda m: run_model(m, batch, device))
    elif _example_size(model) is not None:
        x = torch.randn(1, *_example_size(model), generator=torch.Generator().manual_seed(0)).to(device)
        folded = fold_batchnorm(model, lambda m: m(x))
    else:
        warnings.warn("bqq.quantize could not fold BatchNorm into the convolutions before it (no calibration data "
                      "and no timm input size to run the model on): call bqq.ptq.fold_batchnorm(model, "
                      "lambda m: m(example)) first, or pass fold_bn=False to silence this", stacklevel=3)
        return
    log.info("bqq.quantize: folded %d BatchNorm layers into their convolutions", len(folded))


def _example_size(model: nn.Module) -> tuple[int, ...] | None:
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        size = cfg.get("input_size") if isinstance(cfg, Mapping) else None
        if isinstance(size, (tuple, list)) and all(isinstance(v, int) and v > 0 for v in size):
            return tuple(size)
    return None


# A module left FP holding at least this fraction of the model's parameters is warned about (unless the
# user excluded it or it is one of the defaults: embeddings, a language model's output embedding).
LARGE_FP_FRACTION = 0.01
_EXPECTED_FP = ("not matched by include=", "matched by exclude=", "embedding (", "output embedding",
                "weight tied to", "tokens / position")


def _log_coverage(model: nn.Module) -> None:
    coverage = coverage_report(model)
    log.info("bqq.quantize: %d layers\n%s\n%s", len(coverage["quantized"]), format_report(layer_report(model)),
             format_coverage(coverage))
    large = [row for row in coverage["left_fp"] if row["params"] >= LARGE_FP_FRACTION * coverage["total_params"]
             and not any(e in row["reason"] for e in _EXPECTED_FP)]
    if large:
        listed = "; ".join(f"{r['module']} ({r['params']:,} params): {r['reason']}" for r in large[:8])
        warnings.warn(f"bqq.quantize left large weights in floating point: {listed}", stacklevel=3)


# With inputs="corrected": a layer's target W' = W (C + λI)(H + λI)⁻¹ minimizes Σ ‖W x - W' x̃‖² + λ‖W' - W‖²
# (x the FP model's inputs, x̃ the quantized model's), λ this fraction of H's mean diagonal: pulled towards
# W, not towards 0, in directions the calibration data rarely excites.
CORRECTION_DAMPING = 0.1


def _stage_statistics(root: nn.Module, fp_root: nn.Module | None, stage: list[LayerPlan], prefix: str, mode: str,
                      data: Iterable[Any], fp_data: Iterable[Any] | None = None, forward=None,
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Prepared H per layer of ``stage`` that saw data (the others, and layers whose inputs do not give an H
    such as grouped convolutions, fall back to data-free), and with ``mode="corrected"`` the corrected
    target W' per layer (:func:`~bqq.ptq.hessian.collect_cross_moments`), keyed by the layers' full names.

    ``root``: the model, or the block holding the stage (its layers are named without ``prefix``), run on
    ``data`` by ``forward``; ``fp_root``: its FP twin, run on ``fp_data`` (default: ``data``)."""
    hessians, targets = {}, {}
    kinds = {plan.name: plan.kind for plan in stage if plan.kind.hessian}
    local = {name: name[len(prefix):] for name in kinds}
    if not local:
        return hessians, targets
    if mode == "corrected":
        moments = collect_cross_moments(root, fp_root, list(local.values()), data, forward, fp_data)
    else:
        moments = {name: (h, None, count)
                   for name, (h, count) in collect_hessians(root, list(local.values()), data, forward).items()}
    # Layers that read one input (q, k and v) share one H, C and Cholesky factor: prepared once, used by
    # each, and the layer-only arrays freed as soon as the last user is done (an 11008-wide layer's
    # n x n arrays are ~1 GB each).
    users = Counter(id(moments[rel][0]) for rel in local.values())
    shared: dict[int, _SharedInput] = {}
    for name, rel in local.items():
        h, cross, count = moments.pop(rel)
        if count == 0 or not float(h.diagonal().sum()) > 0:
            continue
        key = id(h)
        if key not in shared:
            shared[key] = _SharedInput.prepare(h, cross)
        entry = shared[key]
        hessians[name] = entry.hessian
        if entry.factor is not None:
            w = weight_matrix(fp_root.get_submodule(rel), kinds[name]).detach().cpu().double().numpy()
            targets[name] = corrected_target(w, entry.cross, entry.factor)
        users[key] -= 1
        if users[key] == 0:
            entry.cross = entry.factor = None
        h = cross = None  # released before the next layer's arrays are made
    return hessians, targets


@dataclass
class _SharedInput:
    """The statistics of one input tensor, shared by the layers that read it: the prepared H (n, n) and,
    when the layers fit corrected targets (:func:`corrected_target`), C' = C / mean_diag(H) + λI (n, n)
    and the lower Cholesky factor of H + λI."""

    hessian: np.ndarray
    cross: np.ndarray | None = None
    factor: np.ndarray | None = None

    @classmethod
    def prepare(cls, h: torch.Tensor, cross: torch.Tensor | None) -> _SharedInput:
        corrected = cross is not None and not torch.equal(cross, h)  # equal: no error upstream yet, W' = W
        h = h.numpy()
        mean_diag = float(np.trace(h)) / len(h)
        h = prepare_hessian(h, copy=False)  # the raw sums are ours: prepared in their memory
        return cls(h, *correction_moments(h, cross.numpy(), mean_diag)) if corrected else cls(h)


def correction_moments(h: np.ndarray, cross: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(C', L) for :func:`corrected_target`: C' = C / scale + λI (``cross`` = C (n, n) as summed,
    overwritten) and L the lower Cholesky factor of H + λI, for ``h`` = H from :func:`prepare_hessian`
    (symmetric, mean diagonal 1) and ``scale`` the raw H's mean diagonal, which the prepared H was divided
    by (C divided by it too leaves W' unchanged); λ = ``CORRECTION_DAMPING``."""
    cross /= scale
    cross[np.diag_indices_from(cross)] += CORRECTION_DAMPING
    return cross, lower_cholesky(damped(h, CORRECTION_DAMPING))


def corrected_target(w: np.ndarray, cross: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """W' = W (C + λI)(H + λI)⁻¹ (m, n) for ``w`` (m, n), from (C', L) of :func:`correction_moments`."""
    return solve_with_factor(factor, (w @ cross).T).T


def _quantize_layers(model: nn.Module, plans: list[LayerPlan], hessians: dict[str, np.ndarray], seed: int,
                     run: dict[str, Any], targets: dict[str, np.ndarray] | None = None) -> None:
    """Solve every candidate of every layer in ``plans`` (one job per group, or per layer for
    output-aware methods with data), keep the best per layer and swap the modules in. ``targets``: a matrix
    to quantize instead of a layer's weight (same shape)."""
    modules = dict(model.named_modules())
    jobs, weights = [], {}
    for plan in plans:
        weights[plan.name], dtype = _weight_matrix(plan, weight_matrix(modules[plan.name], plan.kind))
        if targets and plan.name in targets:
            weights[plan.name] = targets[plan.name].astype(weights[plan.name].dtype)
        h = hessians.get(plan.name)
        for name, settings in candidates(plan, h is not None).items():
            jobs += _layer_jobs(plan, weights[plan.name], dtype, name, settings, layer_seed(seed, plan.name), h)
    results = iter(run_jobs(jobs, **run))
    for plan in plans:
        solved = {}
        for name in candidates(plan, plan.name in hessians):
            cls = get_method(name)
            grid = GroupGrid.build(plan.shape, plan.groups_for(name))
            if _whole(cls, plan.name in hessians):
                solved[name] = next(results)
            else:
                solved[name] = cls.from_groups(grid, [next(results) for _ in range(len(grid))])
        weight, selection = select(solved, weights[plan.name], hessians.get(plan.name))
        install(model, plan, weight).selection = selection


def candidates(plan: LayerPlan, calibrated: bool = False) -> dict[str, dict[str, Any]]:
    """The methods to solve for a layer, with their options (method -> opts): the plan's method, or
    under ``"auto"`` :data:`CANDIDATES` (plus :data:`CALIBRATED_CANDIDATES` when the layer has an H).
    A patch embedding that ``"auto"`` gave channel-wise UQ gets GPTQ beside it when it has an H."""
    if plan.patch_rule and calibrated:
        return {"uq": {}, "gptq": {}}
    if plan.method != AUTO:
        return {plan.method: plan.opts}
    names = CANDIDATES + (CALIBRATED_CANDIDATES if calibrated else ())
    return {method: plan.opts if method == "bqq" else {} for method in names}


def select(solved: dict[str, QuantizedMatrix], w: np.ndarray, hessian: np.ndarray | None = None
           ) -> tuple[QuantizedMatrix, dict[str, Any]]:
    """The candidate with the lowest relative error (the first of equal ones: candidates come in
    preference order) and what was measured: ``{"rel_error": e, "candidates": {method: e}}``. With
    ``hessian`` the error is the output error (:func:`relative_error`) with input channels capped as
    BQQ's objective caps them (:func:`bqq.solver.hessian_math.clipped_channels`, ``BQQConfig.channel_clip``).

    Why capped: under a raw H one "massive" input channel can dominate the measure and rank candidates
    backwards: in MiniLM's first FFN output layer (one input channel hundreds of times the median), a BQQ
    fit of that channel at the cost of all others scored best under the raw H and broke the model, while
    the GPTQ candidate kept it (``benchmarks/ptq_transformer.py`` runs that model)."""
    scale = None if hessian is None else channel_scale(hessian, BQQConfig.channel_clip)
    errors = {name: relative_error(w, q, hessian, scale) for name, q in solved.items()}
    best = min(errors, key=errors.get)
    return solved[best], {"rel_error": errors[best], "candidates": errors if len(errors) > 1 else {},
                          "objective": "weight" if hessian is None else "output"}


def relative_error(w: np.ndarray, q: QuantizedMatrix, hessian: np.ndarray | None = None,
                   channel_scale: np.ndarray | None = None) -> float:
    """‖W − Ŵ‖_F / ‖W‖_F in float64, or with ``hessian`` H the output error sqrt(tr(E H Eᵀ) / tr(W H Wᵀ))
    (E = W − Ŵ; the ratio of Σ‖E x‖² to Σ‖W x‖² over the calibration inputs). 0 for an all-zero W
    rebuilt exactly. ``channel_scale`` D (n,): measured under D H D (what :func:`clipped_channels` gives up
    to a factor, which the ratio cancels) without an n x n copy, by scaling the columns of W and E."""
    w = w.astype(np.float64)
    diff = w - q._dequantize64()
    if hessian is not None and channel_scale is not None:
        w *= channel_scale  # w is our float64 copy
        diff *= channel_scale
    if hessian is None:
        norm, err = float(np.linalg.norm(w)), float(np.linalg.norm(diff))
    else:
        norm, err = _weighted_norm(w, hessian), _weighted_norm(diff, hessian)
    return err / norm if norm > 0 else err


def _weighted_norm(x: np.ndarray, hessian: np.ndarray) -> float:
    """sqrt(tr(X H Xᵀ)) for X (m, n), H (n, n): the O(m n²) product in float32 on every core (a measurement,
    not a solve: float32's rounding is far below any difference the selection acts on, and in float64 this
    product was a sizeable part of an LLM block's GPTQ pass, ``benchmarks/llm_scale.py``), summed in float64."""
    x32 = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    product = x32 @ torch.from_numpy(np.ascontiguousarray(hessian, np.float32))
    return float(np.sqrt(max(float((product.double() * x32.double()).sum()), 0.0)))


def _whole(cls: type[QuantizedMatrix], calibrated: bool) -> bool:
    """Whether a layer is one job for this method: an output-aware method with data (H couples the
    columns of all groups; GPTQ and BQQ carry errors across column groups), or a method that solves all
    groups of a grid in one vectorized call (per-group jobs would cost more than the work)."""
    return (cls.output_aware and calibrated) or getattr(cls, "batched_groups", False)


def _validate(plan: LayerPlan, calibrated: bool) -> None:
    """Fail before any work starts, naming the layer."""
    try:
        for method, opts in candidates(plan, calibrated).items():
            method_config(method, plan.bits, opts)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"layer {plan.name!r}: {exc}") from exc


def _weight_matrix(plan: LayerPlan, weight: torch.Tensor) -> tuple[np.ndarray, str]:
    """The layer's (out, in·kh·kw) weight matrix as numpy (float32, or float64) and its dtype name."""
    w = weight.detach().cpu()
    if not w.is_floating_point() or not torch.isfinite(w).all():
        raise ValueError(f"layer {plan.name!r}: weight must be floating point and finite")
    dtype = dtype_name(w.dtype)
    if w.dtype in (torch.float16, torch.bfloat16):
        w = w.float()  # exact; numpy has no bfloat16
    return w.numpy(), dtype


def _layer_jobs(plan: LayerPlan, w: np.ndarray, dtype: str, method: str, opts: dict[str, Any], seed: int,
                hessian: np.ndarray | None) -> list[GroupJob]:
    """One job per group, or one for the whole layer with its H if the method uses one (:func:`_whole`)."""
    cls = get_method(method)
    grid = GroupGrid.build(plan.shape, plan.groups_for(method))
    if _whole(cls, hessian is not None):
        h = hessian if cls.output_aware else None
        return [GroupJob(plan.name, 0, w, dtype, method, plan.bits, seed, dict(opts), h, plan.groups_for(method))]
    return [GroupJob(plan.name, i, w[rs, cs].copy(), dtype, method, plan.bits, seed, dict(opts))
            for i, (_, _, rs, cs) in enumerate(grid.blocks())]


def install(model: nn.Module, plan: LayerPlan, weight: QuantizedMatrix) -> nn.Module:
    """Put the quantized ``weight`` in place of layer ``plan.name``'s weight; returns the quantized layer
    (a replacing ``QuantizedLinear`` / ``QuantizedConv2d``, or the module's :class:`QuantizedWeight`)."""
    module = model.get_submodule(plan.name)
    device = module.weight.device
    if plan.kind.name in (LINEAR, LINEAR_T):
        layer = QuantizedLinear(weight, module.bias)
    elif plan.kind.name == CONV2D:
        layer = QuantizedConv2d(weight, module.bias, **QuantizedConv2d.conv_args(module))
    else:
        sharers = [module] + [model.get_submodule(name) for name in plan.shared_with]
        return QuantizedWeight.install(sharers, weight, plan.kind.transposed)
    replace_module(model, plan.name, layer.to(device))
    return layer
