"""Input second moments H = Σ x xᵀ of a model's layers, gathered by streaming hooks over calibration data.

H is what the output-aware objective tr((W - Ŵ) H (W - Ŵ)ᵀ) = Σ_x ‖(W - Ŵ) x‖² needs from the data: one
(n, n) float64 sum per layer, updated batch by batch, so no activation is kept. For a Linear x runs over
every token of every batch (padding tokens are left out when the batch carries an ``attention_mask``);
for a Conv2d over every patch the kernel sees (``F.unfold``, in the (C, kh, kw) order of the weight's
rows).

:func:`input_stages` splits the layers into stages that can be quantized one after another with each
stage's H taken from the partly quantized model (GPTQ's order): layers that read the very same tensor
(q, k and v) share a stage, and a pass stops as soon as its last layer has been seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LayerKind, layer_kind, matrix_shape


class _StopForward(Exception):
    """Raised by a hook once every layer of interest has seen its input: the rest of the forward is skipped."""


def run_model(model: nn.Module, batch: Any, device: torch.device) -> Any:
    """``model`` on one calibration batch: a tensor, an (inputs, ...) tuple/list (labels ignored), or a
    mapping of keyword inputs (a tokenizer's output: ``model(**batch)``)."""
    if isinstance(batch, torch.Tensor):
        return model(batch.to(device))
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return model(batch[0].to(device))
    if isinstance(batch, Mapping) and batch:
        return model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    raise TypeError("a calibration batch must be a tensor, an (inputs, ...) tuple or a mapping of model inputs, "
                    f"got {type(batch).__name__}")


# Runs a module on one calibration batch (the model on a DataLoader batch by default, a block on its
# captured inputs in the block-by-block pass).
Forward = Callable[[nn.Module, Any], Any]


def _run_on_own_device(model: nn.Module, batch: Any) -> Any:
    return run_model(model, batch, _device(model))


def _token_mask(batch: Any) -> torch.Tensor | None:
    """The (batch, tokens) padding mask of a batch: a tokenizer's ``attention_mask``, or the ``token_mask``
    a block's captured inputs carry (:class:`bqq.ptq.blocks.BlockInputs`)."""
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else getattr(batch, "token_mask", None)
    return mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None


def layer_inputs(module: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The rows x the layer's weight multiplies, (tokens, n) in float32 (float64 stays float64)."""
    x = x if x.dtype == torch.float64 else x.float()
    if isinstance(module, nn.Conv2d):
        padding = module.padding
        if isinstance(padding, str):  # "valid", or "same" (stride 1; its odd extra row/column is left out of H)
            padding = tuple(0 if padding == "valid" else d * (k - 1) // 2
                            for d, k in zip(module.dilation, module.kernel_size, strict=True))
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        x = x[mask.to(x.device).bool()]  # real tokens only
    return x.reshape(-1, x.shape[-1])


def collect_hessians(model: nn.Module, names: Sequence[str], data: Iterable[Any], forward: Forward | None = None,
                     ) -> dict[str, tuple[torch.Tensor, int]]:
    """H = Σ x xᵀ ((n, n) float64, on the CPU) and the number of rows x for each named layer.

    Runs ``model`` (in eval mode, without gradients) on every batch of ``data`` (with ``forward``, default
    :func:`run_model` on the model's device); a forward stops once all named layers have seen their
    input. A layer the data never reaches gets a zero H and count 0. Layers that read the very same tensor
    (q, k and v) share one sum: the same tensor object is returned for each.
    """
    modules = {name: model.get_submodule(name) for name in names}
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(names, 0)
    owners: dict[str, str] = {}
    for batch in data:
        for name, rows in _owned_rows(_batch_inputs(model, modules, batch, forward), owners).items():
            _accumulate(sums, name, rows, rows)
            counts[name] += rows.shape[0]
    return {name: (_sum_or_zeros(sums, owners.get(name, name), m), counts[owners.get(name, name)])
            for name, m in modules.items()}


def collect_cross_moments(model: nn.Module, reference: nn.Module, names: Sequence[str], data: Iterable[Any],
                          forward: Forward | None = None, reference_data: Iterable[Any] | None = None,
                          ) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """For each named layer (H, C, count): H = Σ x̃ x̃ᵀ over its inputs x̃ in ``model`` and C = Σ x x̃ᵀ with
    x the same layer's inputs in ``reference`` (the floating-point model) on the same tokens, (n, n)
    float64 on the CPU. With them, Σ ‖W x - Ŵ x̃‖² = tr((W' - Ŵ) H (W' - Ŵ)ᵀ) + const for W' = W C H⁻¹:
    a layer can fit the FP model's outputs from inputs that carry the errors of the layers before it.
    ``reference_data``: the reference's own batches, paired one to one with ``data`` (default: the same
    batches; a block of the block-by-block pass reads the FP stream there). Layers that read the very same
    tensor share their sums (:func:`collect_hessians`)."""
    modules = {name: model.get_submodule(name) for name in names}
    references = {name: reference.get_submodule(name) for name in names}
    sums: dict[str, torch.Tensor] = {}
    cross: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(names, 0)
    owners: dict[str, str] = {}
    if reference_data is None:
        pairs: Iterable[tuple[Any, Any]] = ((batch, batch) for batch in data)  # one pass over data
    else:
        batches, fp_batches = list(data), list(reference_data)
        if len(batches) != len(fp_batches):
            raise ValueError(f"{len(batches)} batches against {len(fp_batches)} reference batches")
        pairs = zip(batches, fp_batches, strict=True)
    for batch, fp_batch in pairs:
        fp_rows = _batch_inputs(reference, references, fp_batch, forward)
        for name, rows in _owned_rows(_batch_inputs(model, modules, batch, forward), owners).items():
            fp = fp_rows.get(name)
            if fp is None or fp.shape != rows.shape:
                raise ValueError(f"layer {name!r}: the reference model's inputs do not match the quantized "
                                 f"model's ({None if fp is None else tuple(fp.shape)} vs {tuple(rows.shape)})")
            _accumulate(sums, name, rows, rows)
            _accumulate(cross, name, fp, rows)
            counts[name] += rows.shape[0]
    return {name: (_sum_or_zeros(sums, owners.get(name, name), m), _sum_or_zeros(cross, owners.get(name, name), m),
                   counts[owners.get(name, name)]) for name, m in modules.items()}


def _owned_rows(rows: dict[str, torch.Tensor], owners: dict[str, str]) -> dict[str, torch.Tensor]:
    """The rows of one batch that need their own sums: one entry per distinct tensor, under the first
    layer that read it. ``owners`` (layer -> the layer whose sums it shares) is filled on the first batch
    and must hold for every later one."""
    first: dict[int, str] = {}
    owned = {}
    for name, x in rows.items():
        owner = first.setdefault(id(x), name)
        if owners.setdefault(name, owner) != owner:
            raise ValueError(f"layers {name!r} and {owners[name]!r} read the same input in one calibration batch "
                             "and different inputs in another")
        if owner == name:
            owned[name] = x
    return owned


def _batch_inputs(model: nn.Module, modules: Mapping[str, nn.Module], batch: Any, forward: Forward | None = None
                  ) -> dict[str, torch.Tensor]:
    """The rows each of ``modules`` multiplies in one forward of ``model`` on ``batch`` (the forward stops
    once all have been seen; a layer the batch does not reach is absent)."""
    rows: dict[str, torch.Tensor] = {}
    mask = _token_mask(batch)
    # Layers other than convolutions that read the very same tensor get the very same rows (one sum for
    # q, k and v); the input is kept referenced, so its id is not reused within the forward.
    by_input: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            if name in rows:
                return
            if isinstance(module, nn.Conv2d):
                rows[name] = layer_inputs(module, args[0].detach(), mask)
            else:
                x = args[0]
                rows[name] = by_input.setdefault(id(x), (x, layer_inputs(module, x.detach(), mask)))[1]
            if len(rows) == len(modules):
                raise _StopForward
        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in modules.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            (forward or _run_on_own_device)(model, batch)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return rows


# Columns of aᵀ b formed at a time: a 5632-wide layer's whole float32 product would be a 127 MB temporary.
_CHUNK = 1024


def _accumulate(sums: dict[str, torch.Tensor], name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    """sums[name] += aᵀ b: one batch's product in the inputs' precision (float32: much faster than
    float64 on a CPU, its rounding small against what H is used for), summed over batches in float64, a
    column chunk at a time (no n x n temporary)."""
    if name not in sums:
        sums[name] = torch.zeros(a.shape[1], b.shape[1], dtype=torch.float64, device=a.device)
    for start in range(0, b.shape[1], _CHUNK):
        sums[name][:, start:start + _CHUNK].add_(a.T @ b[:, start:start + _CHUNK])


def _sum_or_zeros(sums: dict[str, torch.Tensor], name: str, module: nn.Module) -> torch.Tensor:
    kind = layer_kind(module)
    n = matrix_shape(module, kind)[1] if isinstance(kind, LayerKind) else module.weight[0].numel()
    return sums[name].cpu() if name in sums else torch.zeros(n, n, dtype=torch.float64)


def input_stages(model: nn.Module, names: Sequence[str], batch: Any, forward: Forward | None = None
                 ) -> list[list[str]]:
    """``names`` in the order one forward on ``batch`` reaches them, cut into stages of consecutive layers
    that read the same tensor. Layers the batch never reaches form a last stage."""
    order: list[tuple[str, torch.Tensor]] = []
    modules = {name: model.get_submodule(name) for name in names}

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            if all(n != name for n, _ in order):
                order.append((name, args[0]))  # kept alive, so identity comparisons are sound
        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in modules.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            (forward or _run_on_own_device)(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    stages: list[list[str]] = []
    previous = None
    for name, x in order:
        if stages and x is previous:
            stages[-1].append(name)
        else:
            stages.append([name])
        previous = x
    unreached = [n for n in names if all(n != o for o, _ in order)]
    return stages + ([unreached] if unreached else [])


def first_batch(data: Iterable[Any]) -> Any:
    """The first batch of ``data`` (ValueError if there is none)."""
    for batch in data:
        return batch
    raise ValueError("calibration data yielded no batches")


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
