"""Strong lottery tickets on Fashion-MNIST: a Conv-6-style CNN, dense vs Edge-Popup vs M-Sup vs frozen.

    python examples/slt_fashion_mnist.py [--epochs 6] [--train-size 20000] [--width 0.5] [--out DIR]

Four runs of the same architecture (conv 64-64 / 128-128 / 256-256 times ``--width``, each followed by
non-affine batch norm and ReLU, max-pooling after every pair, then FC 256-256-10; bias-free):

* ``dense``: weights trained (SGD lr 0.05), stored as fp32;
* ``edge_popup``: random signed-constant weights, a 50 %-sparse supermask searched (SGD lr 0.1);
* ``msup``: a 3-coat multicoated supermask, coat sparsities 0.5 / 0.667 / 0.833;
* ``frozen``: 70 % of the weights frozen (35 % pruned, 35 % locked), target sparsity 0.5, searched
  over the other 30 %.

All use cosine schedules, batch 128, the same seed and data order. The table gives test accuracy and
the stored size as ``bqq.slt.memory_report`` counts it (seed + mask bits + other parameters; the
dense model is 32 bits per weight). Each ticket is exported, reloaded into a fresh model and checked
to give identical logits on 2000 test images. Every epoch is checkpointed in ``OUT/checkpoints`` and every finished
run is kept in ``OUT/runs``: an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bqq
import bqq.slt as slt
from bqq.datasets import load_fashion_mnist

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {
    "dense": {"label": "Dense (weights trained)", "lr": 0.05},
    "edge_popup": {"label": "Edge-Popup, 50 % sparse", "lr": 0.1, "method": "edge_popup", "sparsity": 0.5},
    "msup": {"label": "M-Sup, 3 coats (0.5/0.667/0.833)", "lr": 0.1, "method": "msup", "sparsity": 0.5,
             "coats": 3},
    "frozen": {"label": "Edge-Popup in a 70 %-frozen network", "lr": 0.1, "method": "edge_popup", "sparsity": 0.5,
               "freeze": slt.FreezeConfig(prune=0.35, lock=0.35)},
}


def conv6(width: float = 1.0) -> nn.Sequential:
    """A bias-free Conv-6-style CNN for 1×28×28 inputs -> 10 logits (non-affine batch norm)."""
    c1, c2, c3 = (max(8, round(c * width)) for c in (64, 128, 256))
    layers: list[nn.Module] = []
    channels = 1
    for out in (c1, c1, "pool", c2, c2, "pool", c3, c3, "pool"):
        if out == "pool":
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out, affine=False), nn.ReLU()]
        channels = out
    layers += [nn.Flatten(), nn.Linear(c3 * 3 * 3, 256, bias=False), nn.ReLU(), nn.Linear(256, 256, bias=False),
               nn.ReLU(), nn.Linear(256, 10, bias=False)]
    return nn.Sequential(*layers)


def build(variant: str, width: float, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # the dense run's initial weights
    model = conv6(width)
    spec = VARIANTS[variant]
    if variant != "dense":
        slt.convert(model, method=spec["method"], sparsity=spec["sparsity"], coats=spec.get("coats"),
                    freeze=spec.get("freeze"), seed=seed)
    return model


def run_tag(variant: str, args) -> str:
    """Names a run by everything that changes its result (finished runs and checkpoints are keyed by it)."""
    return f"{variant}_e{args.epochs}_n{args.train_size}_w{args.width}_b{args.batch}_s{args.seed}"


def run_variant(variant: str, args, train_loader, test_x, test_y) -> dict:
    model = build(variant, args.width, args.seed)
    spec = VARIANTS[variant]
    start = time.perf_counter()
    history = slt.fit(model, train_loader, epochs=args.epochs, lr=spec["lr"], seed=args.seed,
                      checkpoint=args.out / "checkpoints" / f"{run_tag(variant, args)}.pt",
                      on_epoch=lambda e, s: print(f"  {variant} epoch {e}: loss {s['loss']:.3f}, "
                                                  f"train acc {s['accuracy']:.2f}%", flush=True))
    seconds = time.perf_counter() - start
    test_loader = DataLoader(TensorDataset(test_x, test_y), batch_size=500)
    accuracy = slt.evaluate(model, test_loader)
    n_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d))
    if variant == "dense":
        size = {"stored_mb": 32 * n_weights / 8e6, "bits_per_weight": 32.0, "compression": 1.0,
                "weights": n_weights}
        exact = True
    else:
        report = slt.memory_report(model)
        size = {"stored_mb": report["ticket_mb"], "bits_per_weight": report["mask_bits_per_weight"],
                "compression": report["compression"], "weights": report["masked_weights"],
                "dense_mb": report["dense_mb"]}
        exact = reload_is_exact(model, variant, args, test_x)
    return {"variant": variant, "label": spec["label"], "accuracy": accuracy, "train_seconds": seconds,
            "epochs": args.epochs, "history": history, "reload_exact": exact, **size}


@torch.no_grad()
def reload_is_exact(model: nn.Module, variant: str, args, test_x) -> bool:
    """Export the ticket, load it into a fresh dense model, compare test logits bit for bit."""
    path = args.out / "tickets" / f"{variant}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    slt.export(model, path)
    fresh = slt.load(path, conv6(args.width)).eval()
    model.eval()
    return all(torch.equal(model(x), fresh(x)) for x in test_x[:2000].split(500))


def table(results: list[dict], dense_mb: float) -> str:
    lines = ["| Model | Test top-1 (%) | Stored size (MB) | Mask bits / weight | vs dense fp32 | Train time (s) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['label']} | {r['accuracy']:.2f} | {r['stored_mb']:.4f} | {r['bits_per_weight']:.3f} | "
                     f"{dense_mb / r['stored_mb']:.1f}x smaller | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--train-size", type=int, default=20000, help="first N training images (60000: all)")
    p.add_argument("--width", type=float, default=0.5, help="channel multiplier (1.0: the original Conv-6)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    wall = time.perf_counter()
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("t10k")
    train_x, train_y = train_x[:args.train_size], train_y[:args.train_size]
    # No generator of its own: slt.fit reseeds torch per epoch, so a resumed run replays the same order.
    loader = DataLoader(TensorDataset(train_x, train_y), batch_size=args.batch, shuffle=True)
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    (args.out / "checkpoints").mkdir(parents=True, exist_ok=True)
    results = []
    for variant in args.variants:
        done = args.out / "runs" / f"{run_tag(variant, args)}.json"
        if done.exists():
            results.append(json.loads(done.read_text()))
            print(f"{variant}: done earlier ({done.name})")
            continue
        print(f"{variant}: training {args.epochs} epochs on {len(train_x)} images", flush=True)
        result = run_variant(variant, args, loader, test_x, test_y)
        done.write_text(json.dumps(result, indent=2))
        results.append(result)
        print(f"{variant}: {result['accuracy']:.2f}% in {result['train_seconds']:.0f} s, {result['stored_mb']:.4f} MB"
              f", reload exact: {result['reload_exact']}", flush=True)
    dense_mb = 32 * results[0]["weights"] / 8e6
    text = table(results, dense_mb)
    wall = time.perf_counter() - wall
    print(text)
    print(f"wall time {wall:.0f} s")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    doc = {"settings": settings, "results": results, "wall_seconds": wall,
           "env": {"bqq": bqq.__version__, "torch": torch.__version__, "python": sys.version.split()[0],
                   "machine": platform.machine(), "threads": torch.get_num_threads()}}
    (args.out / "slt_fashion_mnist.json").write_text(json.dumps(doc, indent=2))
    (args.out / "slt_fashion_mnist.md").write_text(
        f"{text}\n\nCommand: `python examples/slt_fashion_mnist.py --epochs {args.epochs} --train-size "
        f"{args.train_size} --width {args.width}`; Fashion-MNIST test set (10k images).\n")
    return 0 if all(r["reload_exact"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
