"""Per-layer report of a quantized model: the method each layer got, its bits and its weight error.

``bqq.quantize`` stores on every quantized layer what it measured (``layer.selection``: the relative
weight error ‖W − Ŵ‖_F / ‖W‖_F of the chosen method and, under ``method="auto"``, of every
candidate), logs the table at INFO level on the ``bqq`` logger, and ``save_quantized`` keeps it.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .modules import quantized_layers


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
