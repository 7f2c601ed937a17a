"""The model zoo of ``tests/ptq/test_zoo.py`` (timm and transformers architectures, random init, small inputs) and
the 8-bit UQ relative output error of each with ``bqq.quantize``'s defaults.

    python -m benchmarks.zoo [--bits 8] [--method uq]

Prints a Markdown table (model, relative output error against FP, share of linear/conv weights quantized,
seconds) and writes it to ``benchmarks/results/zoo.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import bqq
from bqq.ptq.report import coverage_report

RESULTS = Path(__file__).parent / "results"


class MissingPackage(RuntimeError):
    """An optional package a zoo model needs is not installed."""


def _timm():
    if importlib.util.find_spec("timm") is None:  # checked first: a plain import fails before the compat repair
        raise MissingPackage("timm is not installed (the [vit] extra)")
    from bqq.compat import import_timm

    return import_timm()


def _transformers():
    if importlib.util.find_spec("transformers") is None:
        raise MissingPackage("transformers is not installed (the [hf] extra)")
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
# name -> (builder, bound on the 8-bit UQ relative output error that tests/ptq/test_zoo.py asserts)
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


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, default=8)
    p.add_argument("--method", default="uq")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    rows = []
    for name, (build, _) in ZOO.items():
        model, inputs = build()
        fp = run(model, inputs)
        start = time.perf_counter()
        bqq.quantize(model, bits=args.bits, method=args.method, progress=False)
        seconds = time.perf_counter() - start
        rows.append({"model": name, "error": relative(run(model, inputs), fp),
                     "layers": coverage_report(model)["layer_fraction"], "seconds": seconds})
        print(f"{name}: {rows[-1]['error']:.2e}", flush=True)
    lines = [f"`python -m benchmarks.zoo --bits {args.bits} --method {args.method}` (random init, defaults)", "",
             "| model | relative output error vs FP | linear/conv weights quantized | seconds |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['error']:.2e} | {100 * r['layers']:.1f} % | {r['seconds']:.1f} |" for r in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "zoo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
