"""Offline accuracy evidence for model PTQ: a small timm ViT trained on Fashion-MNIST, then quantized.

    python -m benchmarks.ptq_fashion_mnist [--model patch7|patch4] [--bits 2 3 4] [--methods uq bcq bqq auto]
                                           [--seeds 0 1 2] [--out benchmarks/results]
    python -m benchmarks.ptq_fashion_mnist --aware [--bits 1 2 3]   # data-aware table (GPTQ, output-aware BQQ)

There is no ImageNet or pretrained ViT on this network, so this trains a small timm VisionTransformer
on Fashion-MNIST (Debian package ``dataset-fashion-mnist``) or reuses its committed checkpoint, then
quantizes it with every method at each bits, data-free and calibrated (biases and norms tuned on 1024
training images, the paper's recipe otherwise: Adam lr 1e-3, 15 epochs, batch 16), and prints a table
shaped like the paper's Table 1. Models (``MODELS``):

* ``patch7``: 28×28 inputs, 7×7 patches (49 inputs per patch), width 96, depth 4, 4 heads; 17 Linear
  layers; checkpoint ``results/fashion_vit.safetensors``.
* ``patch4``: 4×4 patches on one channel (a 64×16 patch embedding, the skinny layer BQQ loses on),
  width 64, depth 3, 4 heads; checkpoint ``results/fashion_vit_patch4.safetensors``.

Groups follow ``bqq.quantize``'s paper default (squares of the width, the head 10×width). ``auto`` is
``bqq.quantize``'s default method. With several ``--seeds`` the data-free rows give the mean and spread
over seeds (calibration runs on the first). Finished groups are cached in ``OUT/cache``: an interrupted
run resumes.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, pstdev

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, TensorDataset

import bqq
from bqq.compat import import_timm
from bqq.datasets import load_fashion_mnist

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class FashionViT:
    """One benchmark model: its timm VisionTransformer settings, checkpoint and training length."""

    patch_size: int
    width: int
    depth: int
    checkpoint: Path
    train_epochs: int
    results: str  # stem of the result files

    def make(self) -> torch.nn.Module:
        """The model with random initial weights."""
        import_timm()
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(img_size=28, patch_size=self.patch_size, in_chans=1, num_classes=10,
                                 embed_dim=self.width, depth=self.depth, num_heads=4, mlp_ratio=4.0)


MODELS = {
    "patch7": FashionViT(7, 96, 4, RESULTS / "fashion_vit.safetensors", 10, "ptq_fashion_mnist"),
    "patch4": FashionViT(4, 64, 3, RESULTS / "fashion_vit_patch4.safetensors", 4, "ptq_fashion_mnist_patch4"),
}
CHECKPOINT = MODELS["patch7"].checkpoint


def make_vit() -> torch.nn.Module:
    """The default (patch7) ViT, random init."""
    return MODELS["patch7"].make()


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 10, batch: int = 128,
          lr: float = 2e-3, seed: int = 0) -> None:
    """AdamW with a cosine schedule; deterministic for a seed."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        start = time.perf_counter()
        for i in range(len(x) // batch):
            idx = order[i * batch:(i + 1) * batch]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    model.eval()


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    with bqq.ptq.cached_weights(model):
        hits = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(x), batch))
    return 100.0 * hits / len(x)


def trained_model(retrain: bool = False, spec: FashionViT = MODELS["patch7"]) -> torch.nn.Module:
    """The committed checkpoint, or a freshly trained model (saved as the checkpoint)."""
    torch.manual_seed(0)
    model = spec.make()
    if spec.checkpoint.exists() and not retrain:
        model.load_state_dict(load_file(spec.checkpoint))
        return model.eval()
    x, y = load_fashion_mnist("train")
    train(model, x, y, epochs=spec.train_epochs)
    spec.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, spec.checkpoint)
    return model.eval()


def calibration_loader(n: int = 1024, batch: int = 16, seed: int = 0) -> DataLoader:
    x, y = load_fashion_mnist("train")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return DataLoader(TensorDataset(x[idx], y[idx]), batch_size=batch, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="patch7")
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--methods", nargs="+", default=["uq", "bcq", "bqq", "auto"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="data-free runs: mean and spread")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--retrain", action="store_true", help="train again instead of using the checkpoint")
    parser.add_argument("--calib-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=15, help="calibration epochs")
    parser.add_argument("--workers", type=int, help="local processes for the group solves (same results)")
    parser.add_argument("--sweeps", type=int, help="BQQ annealing sweeps per stack (default: auto, 2000 for 96x96)")
    parser.add_argument("--aware", action="store_true",
                        help="the data-aware table instead: data-free BQQ/auto against GPTQ, output-aware BQQ and "
                             "calibrated auto (each layer solved under its output error), per --bits")
    args = parser.parse_args(argv)
    if args.aware:
        return aware_table(args)
    torch.set_num_threads(2)
    spec = MODELS[args.model]
    start = time.perf_counter()
    fp = trained_model(args.retrain, spec)
    x_test, y_test = load_fashion_mnist("t10k")
    fp_acc = accuracy(fp, x_test, y_test)
    print(f"{args.model} FP32 top-1: {fp_acc:.2f}%", flush=True)
    rows = []
    for bits in args.bits:
        for method in args.methods:
            rows.append(_row(fp, bits, method, args, x_test, y_test))
    wall = time.perf_counter() - start
    table = _table(rows, fp_acc)
    print(table)
    print(f"wall time {wall:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m benchmarks.ptq_fashion_mnist", *(sys.argv[1:] if argv is None else argv)])
    settings = (f"\nCommand: `{command}`\n"
                f"Model {args.model}. Calibration: {args.calib_size} training images, {args.epochs} epochs; BQQ "
                f"sweeps: {args.sweeps or 'auto'}; seeds {args.seeds}. Wall time: {wall:.0f} s on "
                f"{torch.get_num_threads()} threads.\n")
    (args.out / f"{spec.results}.md").write_text(table + "\n" + settings)
    env = {"bqq": bqq.__version__, "torch": torch.__version__, "python": platform.python_version()}
    (args.out / f"{spec.results}.json").write_text(json.dumps(
        {"env": env, "model": args.model, "fp_top1": fp_acc, "rows": rows, "wall_s": wall,
         "calib_size": args.calib_size, "calib_epochs": args.epochs, "bqq_sweeps": args.sweeps or "auto",
         "seeds": args.seeds}, indent=2))


AWARE_ROWS = (("BQQ", "bqq", None, ""), ("auto", "auto", None, ""),
              ("GPTQ", "gptq", 0, "quantized"), ("GPTQ", "gptq", 0, "corrected"),
              ("BQQ (output-aware)", "bqq", 0, "float"), ("BQQ (output-aware)", "bqq", 0, "corrected"),
              ("auto (output-aware)", "auto", 0, "float"), ("auto (output-aware)", "auto", 0, "corrected"),
              ("auto (output-aware) + c-BQQ", "auto", 15, "corrected"))


def aware_table(args: argparse.Namespace) -> None:
    """Data-free against data-aware quantization at each bits: ``AWARE_ROWS`` are (label, method,
    c-BQQ epochs after output-aware solving or None for data-free, where layers' inputs come from)."""
    spec = MODELS[args.model]
    fp = trained_model(False, spec)
    x_test, y_test = load_fashion_mnist("t10k")
    fp_acc = accuracy(fp, x_test, y_test)
    loader = calibration_loader(args.calib_size)
    lines = ["| Wbit | Method | Calibration | Layer inputs | Top-1 (%) | vs FP | bits/weight | quantize s |",
             "|---|---|---|---|---|---|---|---|"]
    rows = []
    for bits in args.bits:
        for label, method, epochs, inputs in AWARE_ROWS:
            opts = {"sweeps": args.sweeps} if method in ("bqq", "auto") and args.sweeps else {}
            calib = None if epochs is None else bqq.Calibration(loader, epochs=epochs, inputs=inputs)
            t0 = time.perf_counter()
            q = bqq.quantize(copy.deepcopy(fp), bits=bits, method=method, calibration=calib, progress=False,
                             cache_dir=args.out / "cache", workers=args.workers, **opts)
            seconds = time.perf_counter() - t0
            acc = accuracy(q, x_test, y_test)
            rows.append({"bits": bits, "label": label, "method": method, "calibrated": calib is not None,
                         "tune_epochs": epochs, "inputs": inputs, "top1": acc, "bits_per_weight": _bits_per_weight(q),
                         "quantize_s": seconds, "layers": bqq.ptq.layer_report(q)})
            star = "*" if method == "bqq" else ""
            how = "none" if calib is None else "H" + (f" + {epochs} epochs" if epochs else "")
            source = {"float": "FP model", "quantized": "quantized model",
                      "corrected": "quantized model, FP outputs as targets"}.get(inputs, "–")
            lines.append(f"| {bits}{star} | {label} | {how} | {source} | {acc:.2f} | {acc - fp_acc:+.2f} | "
                         f"{rows[-1]['bits_per_weight']:.3f} | {seconds:.0f} |")
            print(lines[-1], flush=True)
    lines.append(f"| 32 | FP | – | – | {fp_acc:.2f} | – | 32 | – |")
    command = " ".join(["python -m benchmarks.ptq_fashion_mnist", *sys.argv[1:]])
    table = "\n".join(lines) + (f"\n\nCommand: `{command}`\nModel {args.model}; {args.calib_size} calibration "
                                f"images (Fashion-MNIST train); BQQ sweeps {args.sweeps or 'auto'}; "
                                f"{torch.get_num_threads()} threads.\n")
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{spec.results}_aware.md").write_text(table)
    (args.out / f"{spec.results}_aware.json").write_text(json.dumps(
        {"env": {"bqq": bqq.__version__, "torch": torch.__version__, "python": platform.python_version()},
         "model": args.model, "fp_top1": fp_acc, "rows": rows, "calib_size": args.calib_size}, indent=2))


def _row(fp: torch.nn.Module, bits: int, method: str, args: argparse.Namespace, x_test: torch.Tensor,
         y_test: torch.Tensor) -> dict:
    """Quantize ``fp`` data-free once per seed, then calibrate the first; accuracies and the layer report."""
    opts = {"sweeps": args.sweeps} if method in ("bqq", "auto") and args.sweeps else {}
    free, t_quant, first = [], [], None
    for seed in args.seeds:
        t0 = time.perf_counter()
        q = bqq.quantize(copy.deepcopy(fp), bits=bits, method=method, cache_dir=args.out / "cache", progress=False,
                         workers=args.workers, seed=seed, **opts)
        t_quant.append(time.perf_counter() - t0)
        free.append(accuracy(q, x_test, y_test))
        first = first or q
    report = bqq.ptq.layer_report(first)
    t0 = time.perf_counter()
    bqq.ptq.calibrate(first, fp, bqq.Calibration(calibration_loader(args.calib_size), epochs=args.epochs))
    calibrated = accuracy(first, x_test, y_test)
    bpw = _bits_per_weight(first)
    row = {"bits": bits, "method": method, "data_free": free[0], "data_free_seeds": free,
           "calibrated": calibrated, "bits_per_weight": bpw, "quantize_s": t_quant[0],
           "calibrate_s": time.perf_counter() - t0, "layers": report}
    spread = f" (seeds: mean {mean(free):.2f}, sd {pstdev(free):.2f})" if len(free) > 1 else ""
    print(f"{bits} bits {method}: data-free {free[0]:.2f}%{spread}, calibrated {calibrated:.2f}% "
          f"({bpw:.3f} bits/weight, {t_quant[0]:.0f} s)", flush=True)
    if method == "auto":
        print(bqq.ptq.format_report(report), flush=True)
    return row


def _bits_per_weight(model: torch.nn.Module) -> float:
    layers = [m.qweight for _, m in bqq.ptq.quantized_layers(model)]
    return sum(w.total_bits for w in layers) / sum(w.shape[0] * w.shape[1] for w in layers)


def _spread(values: list[float]) -> str:
    return f"{mean(values):.2f} ± {pstdev(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def _table(rows: list[dict], fp_acc: float) -> str:
    seeds = len(rows[0]["data_free_seeds"])
    spread = f" | data-free over {seeds} seeds: mean ± sd (min–max)" if seeds > 1 else ""
    lines = [f"| Wbit | Method | Data-free | Top-1 (%) | bits/weight (all scalars counted){spread} |",
             "|---|---|---|---|---|" + ("---|" if spread else "")]
    for bits in sorted({r["bits"] for r in rows}):
        for calibrated in (True, False):
            for r in (r for r in rows if r["bits"] == bits):
                label = ("c-" if calibrated else "") + (r["method"] if r["method"] == "auto" else r["method"].upper())
                star = "*" if r["method"] == "bqq" else ""
                acc = r["calibrated"] if calibrated else r["data_free"]
                extra = "" if not spread else " | –" if calibrated else f" | {_spread(r['data_free_seeds'])}"
                lines.append(f"| {bits}{star} | {label} | {'no' if calibrated else 'yes'} | {acc:.2f} | "
                             f"{r['bits_per_weight']:.3f}{extra} |")
    lines.append(f"| 32 | FP | – | {fp_acc:.2f} | 32 |" + (" – |" if spread else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
