"""Wall time and peak memory of data-free PTQ of a whole ViT on this machine.

    python -m benchmarks.ptq_timing [--model deit_small_patch16_224] [--bits 2] [--workers 2] [--out DIR]

Random initialization is enough for timing (the solver's work does not depend on the values). For
DeiT-S at 2* this is 146 groups of 384×384 (blocks and patch embedding) and 40 head groups of 100×96.
The official algorithm needs about 177 s per 384×384 stack on a 2-core CPU (292 stacks: ~14 h).
Peak memory is reported as the main process's peak RSS plus the number of workers times the largest
worker peak (the workers are reaped before measuring): an upper bound of the simultaneous peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from collections import Counter
from pathlib import Path

import torch

import bqq
from bqq.compat import import_timm

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deit_small_patch16_224")
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--method", default="bqq")
    p.add_argument("--workers", type=int, default=2, help="local processes (1: in this process)")
    p.add_argument("--sweeps", type=int, help="BQQ sweeps per stack (default: auto)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = import_timm().create_model(args.model, pretrained=False).eval()
    opts = {"sweeps": args.sweeps} if args.sweeps else {}
    start = time.perf_counter()
    bqq.quantize(model, bits=args.bits, method=args.method, workers=args.workers, progress=True, **opts)
    wall = time.perf_counter() - start
    layers = [m.qweight for _, m in bqq.ptq.quantized_layers(model)]
    shapes = Counter(s for w in layers for s in w.grid.group_shapes())
    groups = sum(shapes.values())
    kib = 1024 if platform.system() != "Darwin" else 1
    main_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib / 2**20
    worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib / 2**20
    if args.workers > 1 and worker_mb == 0:
        raise RuntimeError("worker peak RSS was not captured (workers not reaped)")
    peak_mb = main_mb + (args.workers if args.workers > 1 else 0) * worker_mb
    result = {
        "model": args.model, "method": args.method, "bits": args.bits, "workers": args.workers,
        "groups": groups, "group_shapes": {f"{m}x{n}": c for (m, n), c in shapes.items()},
        "wall_s": wall, "seconds_per_group": wall / groups, "stack_solves": groups * args.bits,
        "peak_rss_mb_bound": peak_mb, "main_rss_mb": main_mb, "worker_rss_mb": worker_mb,
        "bits_per_weight": sum(w.total_bits for w in layers) / sum(w.shape[0] * w.shape[1] for w in layers),
        "bqq": bqq.__version__, "torch": torch.__version__, "cpu_count": os.cpu_count(),
    }
    print(f"{args.model} {args.method} {args.bits} bits: {groups} groups {dict(result['group_shapes'])} in "
          f"{wall / 60:.1f} min ({result['seconds_per_group']:.2f} s/group, {args.workers} workers, "
          f"{os.cpu_count()} cores); peak RSS <= {peak_mb:.0f} MB (main {main_mb:.0f} MB, "
          f"worker {worker_mb:.0f} MB each)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"ptq_timing_{args.model}_{args.method}{args.bits}.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
