"""The contract for "any nn.Module": a zoo of real architectures (timm and transformers, random init, small
inputs) quantized by ``bqq.quantize``.

For each model:
- every quantized layer computes what its module computed with the dequantized weight: the quantized
  model's output equals the FP model (BatchNorm folded the same way) with each weight replaced by Ŵ;
- 8-bit UQ stays close to the FP output (bounds below; random-init nets stack 0.7-0.9 % of weight error
  per layer, the floor of 8-bit UQ on Gaussian weights, over tens of layers);
- at least 95 % of the linear/convolution weights outside embeddings and ``lm_head`` are quantized, and
  embeddings and a language model's output embedding stay FP;
- 2-bit ``auto`` runs, and save -> load gives identical outputs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import bqq
from benchmarks.zoo import ZOO, MissingPackage, relative, run
from bqq.ptq.fold import fold_batchnorm
from bqq.ptq.layers import layer_kind, weight_matrix
from bqq.ptq.report import coverage_report

FAST = {"sweeps": 30}  # 2-bit auto only has to run here


def with_dequantized_weights(reference: nn.Module, quantized: nn.Module, inputs) -> nn.Module:
    """``reference`` (the FP model) folded as bqq.quantize folds, each quantized layer's weight set to Ŵ."""
    fold_batchnorm(reference, lambda m: run(m, inputs[:1] if isinstance(inputs, torch.Tensor) else inputs))
    for name, layer in bqq.ptq.quantized_layers(quantized):
        module = reference.get_submodule(name)
        kind = layer_kind(module)
        with torch.no_grad():
            weight_matrix(module, kind).copy_(layer.qweight.dequantize())
    return reference


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo(name, tmp_path):
    build, bound = ZOO[name]
    try:
        model, inputs = build()
    except MissingPackage as exc:
        pytest.skip(str(exc))
    fp = run(model, inputs)
    reference = copy.deepcopy(model)
    bqq.quantize(model, bits=8, method="uq", progress=False)
    out = run(model, inputs)
    # the contract: each layer computes what its module computes, with its dequantized weight (up to fp32
    # summation order: the packed kernels add in another order than the dense matmul, ~1e-5 over a deep CNN;
    # and, for layers called with a few tokens, the register tables' 16-bit rounding, ~1e-4 over one)
    expected = run(with_dequantized_weights(reference, model, inputs), inputs)
    assert relative(out, expected) < 1e-3, name
    assert relative(out, fp) < bound, name

    coverage = coverage_report(model)
    assert coverage["layer_fraction"] >= 0.95, coverage["left_fp"]
    for row in coverage["left_fp"]:
        assert row["params"] < 0.05 * coverage["total_params"] or not row["layer"] or \
            row["type"] == "Embedding" or "output embedding" in row["reason"] or "tied" in row["reason"], row
    head = getattr(model, "lm_head", None)
    if head is not None:
        assert isinstance(head, nn.Linear) and not bqq.ptq.modules.quantized_weight(head)  # lm_head FP

    model, inputs = build()
    bqq.quantize(model, bits=2, progress=False, **FAST)
    assert {row["method"] for row in coverage_report(model)["quantized"]} <= {"bqq", "uq", "bcq"}
    out = run(model, inputs)
    assert torch.isfinite(out).all()
    bqq.save_quantized(model, tmp_path / "model.safetensors")
    skeleton, _ = build()
    restored = bqq.load_quantized(tmp_path / "model.safetensors", skeleton)
    assert torch.equal(run(restored, inputs), out)
