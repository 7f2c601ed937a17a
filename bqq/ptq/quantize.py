"""`bqq.quantize(model, bits=2)`: replace a model's Linear/Conv2d layers with quantized ones."""

from __future__ import annotations

import concurrent.futures as cf
import copy
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..api import method_config
from ..common import dtype_name, replace_module
from ..grouping import GroupGrid
from ..methods import get_method
from ..quantized import QuantizedMatrix
from .calibrate import Calibration, calibrate
from .modules import QuantizedConv2d, QuantizedLinear
from .plan import AUTO, PAPER_GROUPS, LayerPlan, plan_layers
from .report import format_report, layer_report
from .runner import GroupJob, layer_seed, run_jobs

# The methods "auto" chooses among, in order of preference on equal error: BQQ and the first-order
# codes it claims to beat, all at the same bits (stacks / code width).
CANDIDATES = ("bqq", "uq", "bcq")
log = logging.getLogger("bqq")


def quantize(
    model: nn.Module,
    bits: float = 2,
    *,
    method: str = AUTO,
    group_size: int | Sequence[int] | str | None = PAPER_GROUPS,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    calibration: Calibration | Iterable[Any] | None = None,
    workers: int | cf.Executor | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool | None = None,
    **opts: Any,
) -> nn.Module:
    """Quantize ``model``'s weights in place (weight-only PTQ) and return it.

    Every ``nn.Linear`` and ``groups=1`` ``nn.Conv2d`` (the ViT patch embedding) whose name passes
    ``include``/``exclude`` (fnmatch patterns) becomes a :class:`QuantizedLinear` /
    :class:`QuantizedConv2d` holding one grouped :class:`~bqq.quantized.QuantizedMatrix`; biases, norms
    and tokens stay in floating point. Layer ``name``'s weight equals
    ``bqq.compress(W, bits, method=..., group_size=..., seed=bqq.ptq.runner.layer_seed(seed, name))``.

    Args:
        bits, method, **opts: as in :func:`bqq.compress`, for every layer (``opts`` are fields of the
            method's config, e.g. ``rank_scale=1.5`` or ``sweeps=600`` for BQQ).
        method: a registered method, or ``"auto"`` (default): per layer, whichever of BQQ (``bits``
            stacks), UQ and BCQ (``bits``-bit codes) has the lowest relative weight error, so no layer
            is worse than the first-order codes BQQ is compared with; ``opts`` go to BQQ. Under
            ``"auto"`` convolutions with at most 64 inputs per output (small patch embeddings) get
            channel-wise UQ, the paper's rule (:data:`bqq.ptq.plan.FEW_INPUTS`); ``overrides`` win.
        group_size: as in :func:`bqq.compress` (None: one group per layer), or ``"paper"`` (default):
            ``embed_dim`` squares, 100×96 for the classifier head, 384×384 without ``embed_dim``.
        overrides: fnmatch pattern -> settings for the layers it matches, e.g. ``{"head": {"bits": 4}}``.
        calibration: None for data-free PTQ; a DataLoader (or :class:`Calibration`) for calibrated PTQ
            (c-BQQ): biases and norms are then tuned to match the original model's outputs.
        workers: None (this process), a number of local processes, or a ``concurrent.futures.Executor``.
        cache_dir: persist each finished group; a rerun with the same arguments resumes.
        seed: every layer's seed derives from it and the layer name.
        progress: tqdm bar over groups (None: only on a terminal).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if calibration is not None and not isinstance(calibration, Calibration):
        calibration = Calibration(calibration)
    plans = plan_layers(model, bits=bits, method=method, group_size=group_size, include=include, exclude=exclude,
                        overrides=overrides, opts=opts)
    for plan in plans:
        _validate(plan)
    teacher = copy.deepcopy(model) if calibration is not None else None
    modules = dict(model.named_modules())
    jobs, grids, weights = [], {}, {}
    for plan in plans:
        grids[plan.name] = grid = GroupGrid.build(plan.shape, plan.group_shape)
        weights[plan.name], dtype = _weight_matrix(plan, modules[plan.name].weight)
        for name, settings in candidates(plan).items():
            jobs += _group_jobs(plan, weights[plan.name], dtype, name, settings, grid, layer_seed(seed, plan.name))
    results = iter(run_jobs(jobs, workers=workers, cache_dir=cache_dir, progress=progress))
    for plan in plans:
        grid = grids[plan.name]
        solved = {name: get_method(name).from_groups(grid, [next(results) for _ in range(len(grid))])
                  for name in candidates(plan)}
        weight, selection = select(solved, weights[plan.name])
        layer = _quantized_module(modules[plan.name], weight)
        layer.selection = selection
        _replace(model, plan.name, layer)
    if teacher is not None:
        calibrate(model, teacher, calibration, progress=progress)
    log.info("bqq.quantize: %d layers\n%s", len(plans), format_report(layer_report(model)))
    return model


def candidates(plan: LayerPlan) -> dict[str, dict[str, Any]]:
    """The methods to solve for a layer, with their options (method -> opts)."""
    if plan.method != AUTO:
        return {plan.method: plan.opts}
    return {method: plan.opts if method == "bqq" else {} for method in CANDIDATES}


def select(solved: dict[str, QuantizedMatrix], w: np.ndarray) -> tuple[QuantizedMatrix, dict[str, Any]]:
    """The candidate with the lowest relative weight error (the first of equal ones: candidates come in
    preference order) and what was measured: ``{"rel_error": e, "candidates": {method: e}}``."""
    errors = {name: relative_error(w, q) for name, q in solved.items()}
    best = min(errors, key=errors.get)
    return solved[best], {"rel_error": errors[best], "candidates": errors if len(errors) > 1 else {}}


def relative_error(w: np.ndarray, q: QuantizedMatrix) -> float:
    """‖W − Ŵ‖_F / ‖W‖_F in float64 (0 for an all-zero W rebuilt exactly)."""
    w = w.astype(np.float64)
    norm = float(np.linalg.norm(w))
    diff = float(np.linalg.norm(w - q._dequantize64()))
    return diff / norm if norm > 0 else diff


def _validate(plan: LayerPlan) -> None:
    """Fail before any work starts, naming the layer."""
    try:
        for method, opts in candidates(plan).items():
            method_config(method, plan.bits, opts)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"layer {plan.name!r}: {exc}") from exc


def _weight_matrix(plan: LayerPlan, weight: torch.Tensor) -> tuple[np.ndarray, str]:
    """The layer's weight as an (out, in·kh·kw) numpy matrix (float32, or float64) and its dtype name."""
    w = weight.detach().reshape(plan.shape[0], -1).cpu()
    if not w.is_floating_point() or not torch.isfinite(w).all():
        raise ValueError(f"layer {plan.name!r}: weight must be floating point and finite")
    dtype = dtype_name(w.dtype)
    if w.dtype in (torch.float16, torch.bfloat16):
        w = w.float()  # exact; numpy has no bfloat16
    return w.numpy(), dtype


def _group_jobs(plan: LayerPlan, w: np.ndarray, dtype: str, method: str, opts: dict[str, Any], grid: GroupGrid,
                seed: int) -> list[GroupJob]:
    return [GroupJob(plan.name, i, w[rs, cs].copy(), dtype, method, plan.bits, seed, dict(opts))
            for i, (_, _, rs, cs) in enumerate(grid.blocks())]


def _quantized_module(module: nn.Module, weight: QuantizedMatrix) -> nn.Module:
    if isinstance(module, nn.Linear):
        return QuantizedLinear(weight, module.bias)
    return QuantizedConv2d(weight, module.bias, **QuantizedConv2d.conv_args(module))


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    device = next(model.get_submodule(name).parameters()).device
    replace_module(model, name, new.to(device))
