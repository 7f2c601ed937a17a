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
import importlib.util
from collections.abc import Callable

import pytest
import torch
from torch import nn

import bqq
from bqq.ptq.fold import fold_batchnorm
from bqq.ptq.layers import layer_kind, weight_matrix
from bqq.ptq.report import coverage_report

FAST = {"sweeps": 30}  # 2-bit auto only has to run here


def _timm():
    if importlib.util.find_spec("timm") is None:  # importorskip would import it before the compat repair
        pytest.skip("timm is not installed (the [vit] extra)")
    from bqq.compat import import_timm

    return import_timm()


def _transformers():
    pytest.importorskip("transformers")
    from bqq.compat import import_transformers

    return import_transformers()


def timm_model(arch: str, size: int, **kwargs) -> Callable[[], tuple[nn.Module, torch.Tensor]]:
    def build():
        torch.manual_seed(0)
        model = _timm().create_model(arch, pretrained=False, num_classes=10, **kwargs).eval()
        return model, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    return build


def hf_model(config_name: str, model_name: str, **config) -> Callable[[], tuple[nn.Module, dict]]:
    def build():
        transformers = _transformers()
        torch.manual_seed(0)
        cfg = getattr(transformers, config_name)(vocab_size=96, **config)
        model = getattr(transformers, model_name)(cfg).eval()
        ids = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(1))
        return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return build


DECODER = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "max_position_embeddings": 32}
# name -> (builder, bound on the 8-bit UQ relative output error)
ZOO = {
    "deit_tiny": (timm_model("deit_tiny_patch16_224", 32, img_size=32, patch_size=8, depth=2), 0.03),
    "vit_hybrid_stdconv": (timm_model("vit_tiny_r_s16_p8_224", 64, img_size=64), 0.04),
    "swin": (timm_model("swin_tiny_patch4_window7_224", 32, img_size=32, window_size=4, depths=(1, 1),
                        num_heads=(2, 4), embed_dim=32), 0.02),
    "convnext": (timm_model("convnext_atto", 64), 0.04),
    "resnet": (timm_model("resnet10t", 64), 0.02),
    "efficientnet_lite0_conv2dsame": (timm_model("tf_efficientnet_lite0", 64), 0.05),
    "mobilenetv3": (timm_model("mobilenetv3_small_050", 64), 0.08),
    "gpt2_conv1d": (hf_model("GPT2Config", "GPT2LMHeadModel", n_embd=64, n_layer=2, n_head=4, n_positions=32), 0.02),
    "llama": (hf_model("LlamaConfig", "LlamaForCausalLM", **DECODER), 0.02),
    "qwen2_gqa_tied": (hf_model("Qwen2Config", "Qwen2ForCausalLM", tie_word_embeddings=True, **DECODER), 0.02),
    "bert": (hf_model("BertConfig", "BertModel", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=32), 0.02),
}


def run(model: nn.Module, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    for key in ("logits", "last_hidden_state"):
        if hasattr(out, key):
            return getattr(out, key)
    return out


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


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
    model, inputs = build()
    fp = run(model, inputs)
    reference = copy.deepcopy(model)
    bqq.quantize(model, bits=8, method="uq", progress=False)
    out = run(model, inputs)
    # the contract: each layer computes what its module computes, with its dequantized weight
    expected = run(with_dequantized_weights(reference, model, inputs), inputs)
    assert relative(out, expected) < 1e-5, name
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
