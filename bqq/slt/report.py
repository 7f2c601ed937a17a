"""`bqq.slt.memory_report`: stored size of a ticket against the dense fp32 model, as the papers count it.

Dense: 32 bits per weight of every masked layer (once per shared random weight: the iterations of a
folded block with unshared masks share one) plus 32 per other parameter (biases, affine norms,
unconverted layers); ``dense_params`` overrides the dense count, e.g. with an unfolded counterpart's.
Ticket: one seed, the mask bits in the hierarchical encoding (1 bit per free
weight for one coat; coat i + 1 adds 1 bit per weight kept by coat i; frozen weights cost nothing)
plus 32 bits per other parameter. Norm running statistics are not counted unless
``count_norm_stats=True`` (the HFN/M-Sup convention).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .layers import masked_layers

FP32_BITS = 32


def memory_report(model: nn.Module, *, count_norm_stats: bool = False, seed_bits: int = 64,
                  dense_params: int | None = None) -> dict[str, Any]:
    """Sizes of ``model`` (after :func:`bqq.slt.convert`) as a dense fp32 model and as a stored ticket.

    Returns a dict with ``dense_bits``, ``ticket_bits``, ``mask_bits``, ``other_bits``, ``seed_bits``,
    ``masked_weights`` (weights the masks cover), ``mask_bits_per_weight``, ``dense_mb`` and ``ticket_mb`` (bits / 8e6),
    ``compression`` (dense / ticket), ``reduction`` (1 - ticket / dense) and per-layer ``layers``.
    """
    layers = masked_layers(model)
    if not layers:
        raise ValueError("the model has no masked layers; call bqq.slt.convert(model) first")
    scores = {id(layer.scores) for _, layer in layers if layer.scores is not None}
    per_layer = []
    for name, layer in layers:
        levels = layer.levels if layer.is_fixed else _refreshed(layer)
        kept = [int((levels >= i).sum()) for i in range(1, layer.coats)]
        per_layer.append({"name": name, "weights": layer.numel, "free": layer.n_free, "coats": layer.coats,
                          "mask_bits": layer.n_free + sum(kept), "density": int((levels > 0).sum()) / layer.numel})
    other = sum(p.numel() for p in model.parameters() if id(p) not in scores)
    if count_norm_stats:
        other += sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    masked = sum(entry["weights"] for entry in per_layer)
    shared = {(layer.seed, layer.weight_key): layer.numel for _, layer in layers}
    mask_bits = sum(entry["mask_bits"] for entry in per_layer)
    dense = FP32_BITS * (sum(shared.values()) + other if dense_params is None else dense_params)
    ticket = seed_bits + mask_bits + FP32_BITS * other
    return {
        "dense_bits": dense, "ticket_bits": ticket, "mask_bits": mask_bits, "other_bits": FP32_BITS * other,
        "seed_bits": seed_bits, "masked_weights": masked, "mask_bits_per_weight": mask_bits / masked,
        "dense_mb": dense / 8e6, "ticket_mb": ticket / 8e6, "compression": dense / ticket,
        "reduction": 1.0 - ticket / dense, "layers": per_layer,
    }


def _refreshed(layer):
    layer.group.refresh()
    return layer.levels
