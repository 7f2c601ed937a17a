"""Quantize a timm ViT with BQQ, save it, load it into a fresh model and check the outputs match.

    python examples/quantize_vit.py [--model deit_tiny_patch16_224] [--bits 2] [--pretrained] [--workers 2]

Without --pretrained the model is randomly initialized (this network has no pretrained ViT weights);
with it, timm loads them from the Hugging Face hub or cache. For accuracy on real data see
``benchmarks/ptq_vit.py`` (ImageNet folders) and ``benchmarks/ptq_fashion_mnist.py`` (offline).
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

import bqq
from bqq.compat import import_timm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deit_tiny_patch16_224")
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--pretrained", action="store_true")
    p.add_argument("--workers", type=int, default=None)
    args = p.parse_args()

    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=args.pretrained).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        reference = model(x)

    start = time.perf_counter()
    bqq.quantize(model, bits=args.bits, workers=args.workers, progress=True)
    print(f"quantized {sum(1 for _ in bqq.ptq.quantized_layers(model))} layers in {time.perf_counter() - start:.0f} s")
    print(bqq.ptq.format_report(bqq.ptq.layer_report(model)))
    with torch.no_grad():
        out = model(x)
    print(f"relative logit error vs FP32: {((out - reference) ** 2).mean() / (reference**2).mean():.4f}")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        bqq.save_quantized(model, path)
        fresh = timm.create_model(args.model, pretrained=False).eval()
        restored = bqq.load_quantized(path, fresh)
        with torch.no_grad():
            same = torch.equal(restored(x), out)
        fp32_mb = sum(p.numel() for p in fresh.parameters()) * 4e-6
        print(f"saved {path.stat().st_size / 1e6:.1f} MB (FP32: {fp32_mb:.1f} "
              f"MB); reloaded outputs identical: {same}")


if __name__ == "__main__":
    main()
