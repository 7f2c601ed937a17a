"""Reports of a quantized model: per layer (method, bits, weight error) and coverage (what was quantized,
what stayed FP and why, and the bits the whole model stores).

``bqq.quantize`` stores on every quantized layer what it measured (``layer.selection``: the relative
weight error ‖W − Ŵ‖_F / ‖W‖_F of the chosen method and, under ``method="auto"``, of every
candidate) and on the model the reason each module with a weight matrix stayed FP; it logs both tables
at INFO level on the ``bqq`` logger, and ``save_quantized`` keeps them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .layers import layer_kind
from .modules import quantized_layers, quantized_weight

LEFT_FP_ATTR = "_bqq_left_fp"  # on the model: module name -> why it stayed FP (set by bqq.quantize)


def layer_report(model: nn.Module) -> list[dict[str, Any]]:
    """One row per quantized layer: name, method, bits, group shape, bits/weight, relative weight error
    (None when unknown, e.g. a v1 file) and the candidates' errors (empty unless the method was chosen)."""
    rows = []
    for name, layer in quantized_layers(model):
        q, selection = layer.qweight, layer.selection or {}
        rows.append({"layer": name, "method": q.method, "bits": q.bits, "group_shape": list(q.group_shape),
                     "bits_per_weight": q.bits_per_weight, "rel_error": selection.get("rel_error"),
                     "candidates": dict(selection.get("candidates", {}))})
    return rows


def format_report(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`layer_report` as a Markdown table."""
    lines = ["| layer | method | bits | group | bits/weight | rel. weight error | candidates |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        error = "–" if r["rel_error"] is None else f"{r['rel_error']:.4f}"
        others = format_candidates(r["candidates"]) or "–"
        lines.append(f"| {r['layer']} | {r['method']} | {r['bits']} | {r['group_shape'][0]}x{r['group_shape'][1]} "
                     f"| {r['bits_per_weight']:.3f} | {error} | {others} |")
    return "\n".join(lines)


def format_candidates(candidates: dict[str, float]) -> str:
    """``"bqq 0.2491, uq 0.3826, ..."``: each candidate method's relative weight error."""
    return ", ".join(f"{method} {error:.4f}" for method, error in candidates.items())


def record_left_fp(model: nn.Module, reasons: dict[str, str]) -> None:
    """Remember why each of ``reasons``' modules stayed FP (merged with an earlier pass's reasons)."""
    merged = dict(getattr(model, LEFT_FP_ATTR, None) or {})
    merged.update(reasons)
    object.__setattr__(model, LEFT_FP_ATTR, merged)


def coverage_report(model: nn.Module) -> dict[str, Any]:
    """What is quantized and what is not, in parameters and in stored bits.

    Returns a dict with ``quantized`` (rows: module, method, params, shared_with), ``left_fp`` (rows:
    module, type, params in its weight matrices, reason, layer: whether it is a linear/convolution),
    ``total_params`` (every parameter, a quantized weight counted by its element count), ``quantized_params``,
    ``quantized_fraction``, ``layer_fraction`` (quantized share of the linear/convolution weights, other
    than those left FP as embeddings or a language model's output embedding), ``bits_per_weight`` (stored bits
    of the quantized weights, every scalar counted, per weight) and ``model_bits_per_param`` (every
    parameter: quantized weights at their stored bits, FP leftovers at their dtype's bits).
    """
    reasons = getattr(model, LEFT_FP_ATTR, None) or {}
    quantized, shared = [], {}
    for name, layer in quantized_layers(model):
        quantized.append({"module": name, "method": layer.qweight.method, "params": _numel(layer.qweight.shape),
                          "bits": layer.qweight.total_bits, "shared_with": []})
        shared[id(layer)] = quantized[-1]
    holders = set()
    for name, module in model.named_modules():
        param = quantized_weight(module)
        if param is not None:
            holders.add(name)
            row = shared[id(param)]
            if row["module"] != name:
                row["shared_with"].append(name)
    left_fp = []
    for name, module in model.named_modules():
        if name in holders:
            continue
        matrices = [p for p in module.parameters(recurse=False) if p.dim() >= 2]
        if not matrices:
            continue
        kind = layer_kind(module)
        left_fp.append({"module": name, "type": type(module).__name__, "params": sum(p.numel() for p in matrices),
                        "reason": reasons.get(name, "not quantized by bqq.quantize"),
                        "layer": not isinstance(kind, str)})
    fp_params = {id(p): p for p in model.parameters()}
    quantized_params = sum(row["params"] for row in quantized)
    total = quantized_params + sum(p.numel() for p in fp_params.values())
    quantized_bits = sum(row["bits"] for row in quantized)
    fp_bits = sum(p.numel() * p.element_size() * 8 for p in fp_params.values())
    counted = [r["params"] for r in left_fp if r["layer"] and not r["reason"].startswith(_NOT_COUNTED)]
    return {
        "quantized": quantized, "left_fp": left_fp, "total_params": total, "quantized_params": quantized_params,
        "quantized_fraction": quantized_params / total if total else 0.0,
        "layer_fraction": quantized_params / (quantized_params + sum(counted)) if quantized_params else 0.0,
        "bits_per_weight": quantized_bits / quantized_params if quantized_params else 0.0,
        "model_bits_per_param": (quantized_bits + fp_bits) / total if total else 0.0,
    }


# Left FP by default on purpose, not counted against layer coverage.
_NOT_COUNTED = ("output embedding", "weight tied to")


def format_coverage(coverage: dict[str, Any]) -> str:
    """The coverage of :func:`coverage_report` as text: a summary line and one row per module left FP."""
    lines = [f"quantized {len(coverage['quantized'])} layers: {coverage['quantized_params']:,} of "
             f"{coverage['total_params']:,} parameters ({100 * coverage['quantized_fraction']:.1f} %; "
             f"{100 * coverage['layer_fraction']:.1f} % of linear/conv weights); "
             f"{coverage['bits_per_weight']:.3f} bits per quantized weight, "
             f"{coverage['model_bits_per_param']:.3f} bits per parameter over the whole model "
             "(FP leftovers at their dtype, every scalar counted)"]
    for row in coverage["quantized"]:
        if row["shared_with"]:
            lines.append(f"  {row['module']}: one quantized weight shared with {', '.join(row['shared_with'])}")
    if coverage["left_fp"]:
        lines += ["| left in floating point | type | params | reason |", "|---|---|---|---|"]
        lines += [f"| {r['module']} | {r['type']} | {r['params']:,} | {r['reason']} |" for r in coverage["left_fp"]]
    return "\n".join(lines)


def _numel(shape: tuple[int, int]) -> int:
    return int(shape[0]) * int(shape[1])


__all__ = ["coverage_report", "format_candidates", "format_coverage", "format_report", "layer_report",
           "record_left_fp"]
