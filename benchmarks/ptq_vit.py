"""ImageNet top-1 of a timm ViT before and after PTQ (data-free or calibrated).

    python -m benchmarks.ptq_vit --model deit_small_patch16_224 --bits 2 [--method auto|bqq|bcq|uq] \\
        --data IMAGENET_VAL_DIR [--calib TRAIN_DIR --calib-size 2048] [--weights FILE] [--out result.json]

Data folders use the imagefolder layout (``DIR/<class>/<image>``, classes in sorted order = label
index, which is the standard ImageNet order for the ``n0...`` synset folders) and are read with
Hugging Face ``datasets``; images get the model's timm eval transform. Weights come from timm's
``pretrained=True`` (Hugging Face hub or its local cache) or from ``--weights`` (a safetensors or
torch state dict). Missing data or weights fail at once with a message saying what to provide.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import bqq
from bqq.compat import import_timm


def build_model(name: str, weights: Path | None, num_classes: int | None) -> torch.nn.Module:
    """A timm model with pretrained weights (hub/cache) or weights from a local file."""
    timm = import_timm()
    kwargs = {"num_classes": num_classes} if num_classes else {}
    if weights is not None:
        if not weights.is_file():
            raise SystemExit(f"--weights {weights}: no such file")
        model = timm.create_model(name, pretrained=False, **kwargs)
        state = _read_state_dict(weights)
        model.load_state_dict(state)
        return model.eval()
    try:
        return timm.create_model(name, pretrained=True, **kwargs).eval()
    except Exception as exc:  # the hub raises several types when offline or when the cache lacks the file
        raise SystemExit(f"pretrained weights for {name!r} are not available ({type(exc).__name__}: {exc}). "
                         "Provide them with --weights FILE (a state dict), or put them in the Hugging Face cache "
                         "(HF_HOME) on a machine with network access.") from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)  # no pickle code execution
    return state.get("model", state) if isinstance(state, dict) else state


def image_folder(path: Path, model: torch.nn.Module, limit: int | None = None, seed: int = 0):
    """A torch dataset of (image tensor, label) from an imagefolder directory."""
    if not path.is_dir():
        raise SystemExit(f"{path}: not a folder; expected the imagefolder layout DIR/<class>/<image>.JPEG "
                         "(e.g. the ImageNet validation set sorted into its 1000 synset folders)")
    from datasets import load_dataset
    from timm.data import create_transform, resolve_data_config

    ds = load_dataset("imagefolder", data_dir=str(path), split="train")
    if len(ds) == 0:
        raise SystemExit(f"{path}: no images found")
    if limit is not None and limit < len(ds):
        ds = ds.shuffle(seed=seed).select(range(limit))
    transform = create_transform(**resolve_data_config({}, model=model))

    def apply(batch):
        return {"pixel_values": [transform(im.convert("RGB")) for im in batch["image"]], "label": batch["label"]}

    ds.set_transform(apply)
    return ds


def _collate(rows):
    return torch.stack([r["pixel_values"] for r in rows]), torch.tensor([r["label"] for r in rows])


@torch.no_grad()
def top1(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    hits = total = 0
    with bqq.ptq.cached_weights(model):
        for x, y in loader:
            hits += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return 100.0 * hits / total


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deit_small_patch16_224")
    p.add_argument("--bits", type=float, default=2)
    p.add_argument("--method", default="auto", choices=["auto", *bqq.available_methods()],
                   help="auto (bqq.quantize's default): per layer the best of BQQ, UQ, BCQ by weight error")
    p.add_argument("--data", type=Path, required=True, help="evaluation imagefolder (e.g. ImageNet val)")
    p.add_argument("--calib", type=Path, help="calibration imagefolder (e.g. ImageNet train): calibrated PTQ")
    p.add_argument("--calib-size", type=int, default=2048)
    p.add_argument("--calib-epochs", type=int, default=15)
    p.add_argument("--weights", type=Path, help="local state dict instead of timm pretrained=True")
    p.add_argument("--num-classes", type=int, help="override the model's number of classes")
    p.add_argument("--max-images", type=int, help="evaluate on a seeded random subset")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, help="local processes for the group solves")
    p.add_argument("--cache-dir", type=Path, help="resume folder for finished groups")
    p.add_argument("--include", nargs="+")
    p.add_argument("--sweeps", type=int, help="BQQ annealing sweeps per stack (default: auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="JSON results file")
    args = p.parse_args(argv)

    model = build_model(args.model, args.weights, args.num_classes)
    val = DataLoader(image_folder(args.data, model, args.max_images, args.seed), batch_size=args.batch_size,
                     collate_fn=_collate)
    calib = None
    if args.calib is not None:
        calib_set = image_folder(args.calib, model, args.calib_size, args.seed)
        calib = bqq.Calibration(DataLoader(calib_set, batch_size=16, shuffle=True, collate_fn=_collate,
                                           generator=torch.Generator().manual_seed(args.seed)),
                                epochs=args.calib_epochs)
    fp_top1 = top1(model, val)
    print(f"{args.model} FP32 top-1: {fp_top1:.2f}%", flush=True)
    opts = {"sweeps": args.sweeps} if args.sweeps else {}
    start = time.perf_counter()
    bqq.quantize(model, bits=args.bits, method=args.method, calibration=calib, workers=args.workers,
                 cache_dir=args.cache_dir, include=args.include, seed=args.seed, progress=True, **opts)
    seconds = time.perf_counter() - start
    q_top1 = top1(model, val)
    label = ("c-" if calib else "") + (args.method if args.method == "auto" else args.method.upper())
    print(bqq.ptq.format_report(bqq.ptq.layer_report(model)))
    print(f"{label} {args.bits:g} bits: top-1 {q_top1:.2f}% (FP32 {fp_top1:.2f}%), quantized in {seconds:.0f} s")
    result = {"model": args.model, "method": args.method, "bits": args.bits, "calibrated": calib is not None,
              "fp_top1": fp_top1, "quantized_top1": q_top1, "quantize_seconds": seconds,
              "images": len(val.dataset), "seed": args.seed, "bqq": bqq.__version__, "torch": torch.__version__,
              "python": platform.python_version(), "cpu_count": os.cpu_count(),
              "layers": bqq.ptq.layer_report(model)}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
