"""Wall time and peak memory of data-free PTQ of a whole ViT on this machine.

    python -m benchmarks.ptq_timing [--model deit_small_patch16_224] [--bits 2] [--workers 2] [--out DIR]
    python -m benchmarks.ptq_timing --device cuda    # the GPU solver: bqq.quantize(model, ..., device="cuda")

Random initialization is enough for timing (the solver's work does not depend on the values). For
DeiT-S at 2* this is 146 groups of 384×384 (blocks and patch embedding) and 40 head groups of 100×96.
The official algorithm needs about 177 s per 384×384 stack on a 2-core CPU (292 stacks: ~14 h).
Peak memory is reported as the main process's peak RSS plus the number of workers times the largest
worker peak (the workers are reaped before measuring): an upper bound of the simultaneous peak.
With ``--device cuda`` the solver runs on the GPU (one process by default) and the peak GPU memory
(torch's allocator: allocated and reserved) is reported too; results go to a ``_cuda`` file.
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
    p.add_argument("--workers", type=int, help="local processes (1: in this process; default 2, 1 with --device)")
    p.add_argument("--device", help="solve on this torch device, e.g. cuda (default: the CPU solver)")
    p.add_argument("--sweeps", type=int, help="BQQ sweeps per stack (default: auto)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.workers is None:
        args.workers = 1 if args.device else 2
    opts = {"sweeps": args.sweeps} if args.sweeps else {}
    gpu = None
    if args.device:
        opts["device"] = args.device
        if torch.device(args.device).type == "cuda":
            if not torch.cuda.is_available():
                raise SystemExit(f"--device {args.device}: torch sees no CUDA GPU")
            gpu = torch.device(args.device)
            torch.cuda.reset_peak_memory_stats(gpu)
    torch.manual_seed(0)
    model = import_timm().create_model(args.model, pretrained=False).eval()
    start = time.perf_counter()
    bqq.quantize(model, bits=args.bits, method=args.method, workers=args.workers, progress=True, **opts)
    if gpu is not None:
        torch.cuda.synchronize(gpu)
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
        "device": args.device or "cpu",
    }
    if gpu is not None:  # (includes Triton compilation: wall time is that of a first run in a fresh process)
        result |= {"gpu": torch.cuda.get_device_name(gpu), "cuda": torch.version.cuda,
                   "peak_gpu_allocated_mb": torch.cuda.max_memory_allocated(gpu) / 2**20,
                   "peak_gpu_reserved_mb": torch.cuda.max_memory_reserved(gpu) / 2**20}
    print(f"{args.model} {args.method} {args.bits} bits: {groups} groups {dict(result['group_shapes'])} in "
          f"{wall / 60:.1f} min ({result['seconds_per_group']:.2f} s/group, {args.workers} workers, "
          f"{os.cpu_count()} cores); peak RSS <= {peak_mb:.0f} MB (main {main_mb:.0f} MB, "
          f"worker {worker_mb:.0f} MB each)")
    if gpu is not None:
        print(f"device {args.device} ({result['gpu']}): peak GPU memory {result['peak_gpu_allocated_mb']:.0f} MB "
              f"allocated, {result['peak_gpu_reserved_mb']:.0f} MB reserved")
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = f"_{torch.device(args.device).type}" if args.device else ""
    name = f"ptq_timing_{args.model}_{args.method}{args.bits}{suffix}.json"
    (args.out / name).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
