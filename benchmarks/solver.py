"""BQQ solver benchmark: quality against the paper's Table S.4 and speed against the official code.

    python benchmarks/solver.py [--repeats 3] [--json OUT.json]                  # CPU solver (bqq.compress)
    python benchmarks/solver.py --baseline [REF] [--rounds 3]                  # against earlier code, one run
    python benchmarks/solver.py --device cuda [--tune] [--tf32] [--json OUT.json]  # GPU solver (bqq.solver_torch)

Quality: MSE after p = 1..4 stacks on 128×128 standardized Gaussians (the paper's matrix,
``torch.manual_seed(1); torch.randn``, and ``numpy.random.default_rng(k)`` for k = 1, 2, 3), with the
default settings, against Table S.4 (0.3243, 0.1053, 0.0344, 0.0112).

Groupings: one 1024×1024 ``default_rng(1)`` matrix at 2* cut into 1024², 256², 128² and 64² groups, with the
default schedule and with ``sweep_budget=1.1e5`` (less time, more error): seconds,
time per weight, MSE, bits per weight (every scalar counted), and the solve's effective GFLOP/s (the
annealing sweeps' GEMM and band arithmetic, :func:`sweep_flops`, over the whole wall time) beside dense fp32
GEMM measured in the same run.

Schedule: the default annealing schedule (per-weight sweeps, polish tolerance) against the one before it
(per-group sweeps: 353 at 384², 6000 at 128²; polish until nothing flips), MSE and seconds on
``default_rng(1..3)`` matrices of several group shapes, one stack (two for one 384² row).

Speed: seconds per stack (median of ``--repeats`` timed runs after one warm-up that also compiles the
numba kernels) and MSE for one stack at 128², 384² and 384×1536 on ``default_rng(1)`` matrices, with the
ratio to the official algorithm's time on a 2-core CPU (bqq-method.md §5.4: 128² 41.5 s at MSE
0.3287; 384² 176.9 s at MSE 0.3237, both 50,000 steps).

``--device cuda``: the batched GPU solver (:mod:`bqq.solver_torch`, called directly: stack solve plus
exact refit, no model API involved), default settings (auto sweeps), standardized Gaussian groups:
one stack of 146 groups of 384² (DeiT-S's count) and of 128²; 4096×4096 and 11008×4096 cut into
384-groups at 2 stacks; and a projection for a 7B LLM (Llama-2-7B: 32 layers of 4 × 4096² + 3 ×
11008×4096) as 32 × the measured time of one such layer's seven matrices, each quantized as one
batch. Seconds include the host→device copy, the numpy start draws, solve, refit and synchronization;
Triton compilation is excluded by a warm-up on the same shapes. Peak GPU memory per row is printed
beside :func:`bqq.solver_torch.bytes_per_group`'s estimate. ``--tune`` first times the row-sweep kernel
alone under several launch shapes. Targets (H200-class GPU) are printed next to the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numba
import numpy as np
import torch

import bqq

try:  # run as a script (python benchmarks/solver.py) or as a module (python -m benchmarks.solver)
    from solver_baseline import ISSUE_23_BASELINE, compare, print_comparison
except ImportError:
    from benchmarks.solver_baseline import ISSUE_23_BASELINE, compare, print_comparison

PAPER_RANDOM = {1: 0.3243, 2: 0.1053, 3: 0.0344, 4: 0.0112}  # Table S.4, Random, l_scale = 1
OFFICIAL = {(128, 128): (41.5, 0.3287), (384, 384): (176.9, 0.3237)}  # 2-core CPU, 50k steps
SPEED_TARGET = {(128, 128): 4.0, (384, 384): 5.0}  # seconds per stack the issue asks for


def standardize(w: np.ndarray) -> np.ndarray:
    return (w - w.mean()) / w.std()


def paper_matrix() -> np.ndarray:
    torch.manual_seed(1)
    return standardize(torch.randn(128, 128, dtype=torch.float64).numpy())


def numpy_matrix(m: int, n: int, seed: int = 1) -> np.ndarray:
    return standardize(np.random.default_rng(seed).standard_normal((m, n)))


def mse(q: bqq.QuantizedMatrix, w: np.ndarray) -> float:
    return float(((q.dequantize().double().numpy() - w) ** 2).mean())


def quality_rows() -> list[dict]:
    rows = []
    matrices = [("paper (torch seed 1)", paper_matrix())]
    matrices += [(f"numpy rng({k})", numpy_matrix(128, 128, k)) for k in (1, 2, 3)]
    for data_name, w in matrices:
        start = time.perf_counter()
        q = bqq.compress(w, bits=1)
        errors = [mse(q, w)]
        for _ in range(3):
            errors.append(mse(q.extend(1), w))
        rows.append({"matrix": data_name, "setting": "default", "mse": errors, "seconds": time.perf_counter() - start})
    return rows


def speed_rows(repeats: int) -> list[dict]:
    rows = []
    for shape in ((128, 128), (384, 384), (384, 1536)):
        w = numpy_matrix(*shape)
        bqq.compress(w, bits=1)  # warm-up (numba compilation is cached on disk after the first run)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            q = bqq.compress(w, bits=1)
            times.append(time.perf_counter() - start)
        rows.append({"shape": list(shape), "rank": q.ranks[0], "sweeps": bqq.methods.bqq.auto_sweeps(shape, q.ranks[0]),
                     "seconds": statistics.median(times), "all_seconds": times, "mse": mse(q, w)})
    return rows


PREVIOUS_SCHEDULE = {"sweep_rule": "per_group", "polish_tolerance": 0.0}  # the defaults of BQQConfig version 3
SCHEDULE_CASES = (((384, 384), 1), ((384, 384), 2), ((256, 256), 1), ((128, 128), 1), ((96, 384), 1),
                  ((384, 1536), 1))
GROUPING_SIDE = 1024
GROUPINGS = (None, 256, 128, 64)  # one 1024² group, then square groups
FAST_BUDGET = 1.1e5  # a sweep_budget that trades some error for time (the grouping table's second block)
GROUPING_BITS = 2
GROUPING_TARGET_S = 10.0  # one 1024² matrix at 2*, any grouping


def dense_gemm_gflops(size: int = 1024, repeats: int = 5) -> float:
    """fp32 GEMM of two size² matrices through numpy (BLAS, its default threads), median GFLOP/s."""
    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    a @ a
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def sweep_flops(m: int, n: int, l: int, band: int = 64) -> float:
    """Floating-point operations of one plain sweep of one m x n group as the CPU solver performs them:
    per phase X V (rows x cols x l), G U (rows x l²), the Gram matrix's lower half (cols x l²/2) and
    the band updates (rows x l x band/2), for the U and the V phase, 2 flops per multiply-add."""
    def phase(rows: int, cols: int) -> float:
        return rows * cols * l + rows * l * l + cols * l * l / 2 + rows * l * min(band, l) / 2
    return 2.0 * (phase(m, n) + phase(n, m))


def grouping_rows(gemm: float) -> list[dict]:
    """One 1024² standardized Gaussian at 2* with each grouping: seconds, time per weight, MSE, bits per
    weight, and the solve's effective GFLOP/s (annealing arithmetic over the whole wall time, polish and
    refit included, so a lower bound) beside dense fp32 GEMM measured in this run."""
    w = numpy_matrix(GROUPING_SIDE, GROUPING_SIDE)
    bqq.compress(w[:64, :64], bits=1, sweeps=2)  # numba compilation (cached on disk after the first run)
    rows = []
    for budget in (None, FAST_BUDGET):
        opts = {} if budget is None else {"sweep_budget": budget}
        for group in GROUPINGS:
            start = time.perf_counter()
            q = bqq.compress(w, bits=GROUPING_BITS, group_size=group, progress=False, **opts)
            seconds = time.perf_counter() - start
            side = group or GROUPING_SIDE
            rank = q.ranks[0]
            sweeps = bqq.methods.bqq.auto_sweeps((side, side), rank, budget=budget)
            flops = sweep_flops(side, side, rank) * sweeps * len(q.ranks) * GROUPING_BITS
            rows.append({"group": side, "groups": len(q.ranks), "rank": rank, "sweep_budget": budget,
                         "sweeps": sweeps, "seconds": seconds,
                         "us_per_weight_per_stack": 1e6 * seconds / w.size / GROUPING_BITS, "mse": mse(q, w),
                         "bits_per_weight": q.bits_per_weight, "gflops": flops / seconds / 1e9,
                         "gemm_fraction": flops / seconds / 1e9 / gemm})
    return rows


def print_grouping(rows: list[dict], gemm: float) -> None:
    print(f"\n## Groupings: one {GROUPING_SIDE}x{GROUPING_SIDE} standardized Gaussian at {GROUPING_BITS}*, default "
          f"schedule (dense fp32 GEMM in this run: {gemm:.0f} GFLOP/s)\n")
    print("| sweep_budget | group | groups | l | sweeps | seconds | us/weight/stack | MSE | bits/weight | GFLOP/s | "
          f"of GEMM | <= {GROUPING_TARGET_S:.0f} s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        met = "yes" if r["seconds"] <= GROUPING_TARGET_S else "NO"
        budget = "default" if r["sweep_budget"] is None else f"{r['sweep_budget']:.2g}"
        print(f"| {budget} | {r['group']}² | {r['groups']} | {r['rank']} | {r['sweeps']} | {r['seconds']:.1f} | "
              f"{r['us_per_weight_per_stack']:.2f} | {r['mse']:.4f} | {r['bits_per_weight']:.4f} | {r['gflops']:.0f} | "
              f"{100 * r['gemm_fraction']:.0f} % | {met} |")


def schedule_rows() -> list[dict]:
    """Per case and schedule: mean MSE over three matrices, the MSEs, sweeps and mean seconds per solve."""
    rows = []
    for shape, stacks in SCHEDULE_CASES:
        for name, opts in (("previous", PREVIOUS_SCHEDULE), ("default", {})):
            errors, seconds = [], []
            for seed in (1, 2, 3):
                w = numpy_matrix(*shape, seed)
                start = time.perf_counter()
                q = bqq.compress(w, bits=stacks, **opts)
                seconds.append(time.perf_counter() - start)
                errors.append(mse(q, w))
            sweeps = bqq.methods.bqq.auto_sweeps(shape, q.ranks[0], rule=opts.get("sweep_rule", "per_weight"))
            rows.append({"shape": list(shape), "stacks": stacks, "schedule": name, "sweeps": sweeps,
                         "mse": float(np.mean(errors)), "mses": errors, "seconds": float(np.mean(seconds))})
    return rows


def print_schedule(rows: list[dict]) -> None:
    print("\n## Schedule: default (per-weight sweeps, polish tolerance 1e-4) against the previous one (per-group "
          "sweeps, polish until nothing flips); mean of 3 matrices\n")
    print("| shape | p | previous sweeps | previous MSE | previous s | default sweeps | default MSE | default s | "
          "MSE ratio | time ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for old, new in zip(rows[::2], rows[1::2], strict=True):
        shape = tuple(old["shape"])
        cells = [f"{shape[0]}x{shape[1]}", old["stacks"], old["sweeps"], f"{old['mse']:.4f}", f"{old['seconds']:.2f}",
                 new["sweeps"], f"{new['mse']:.4f}", f"{new['seconds']:.2f}", f"{new['mse'] / old['mse']:.4f}",
                 f"{new['seconds'] / old['seconds']:.2f}"]
        print("| " + " | ".join(str(c) for c in cells) + " |")


def print_quality(rows: list[dict]) -> None:
    print("\n## Quality: MSE after p stacks, 128x128 standardized Gaussian (bar: paper Table S.4)\n")
    print("| matrix | setting | p=1 | p=2 | p=3 | p=4 | all <= paper | seconds (p=1..4) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ok = all(e <= PAPER_RANDOM[p + 1] for p, e in enumerate(r["mse"]))
        cells = " | ".join(f"{e:.4f}" for e in r["mse"])
        print(f"| {r['matrix']} | {r['setting']} | {cells} | {'yes' if ok else 'NO'} | {r['seconds']:.1f} |")
    print("| paper Table S.4 | AMFD, 50k steps | " + " | ".join(f"{v:.4f}" for v in PAPER_RANDOM.values())
          + " | | |")


def print_speed(rows: list[dict]) -> None:
    print("\n## Speed: one stack, default settings (median seconds per stack)\n")
    print("| shape | l | sweeps | s/stack | MSE | official s (MSE) | speed-up | target | met |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        shape = tuple(r["shape"])
        if shape in OFFICIAL:
            off_s, off_mse = OFFICIAL[shape]
            target = SPEED_TARGET[shape]
            met = "yes" if r["seconds"] <= target and r["mse"] <= off_mse else "NO"
            cells = (f"{off_s:.1f} ({off_mse:.4f}) | {off_s / r['seconds']:.1f}x | "
                     f"<= {target:.0f} s at MSE <= {off_mse} | {met}")
        else:
            cells = "— | — | — | —"
        print(f"| {shape[0]}x{shape[1]} | {r['rank']} | {r['sweeps']} | {r['seconds']:.2f} | {r['mse']:.4f} | "
              f"{cells} |")


CPU_PARTS = ("grouping", "speed", "quality", "schedule")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per shape (median reported)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--device", default="cpu", help="cpu (bqq.compress) or cuda (bqq.solver_torch)")
    parser.add_argument("--tune", action="store_true", help="cuda: also time the row-sweep kernel's launch shapes")
    parser.add_argument("--tf32", action="store_true", help="cuda: also run the DeiT-S row with TF32 GEMMs")
    parser.add_argument("--skip-llm", action="store_true", help="cuda: skip the large matrices and the 7B projection")
    parser.add_argument("--smoke", action="store_true",
                        help="run the cuda code path on tiny shapes in Triton's interpreter (checks the script; "
                             "its numbers are not measurements)")
    parser.add_argument("--baseline", nargs="?", const=ISSUE_23_BASELINE, metavar="REF",
                        help="only time one stack against git revision REF (benchmarks/solver_baseline.py)")
    parser.add_argument("--rounds", type=int, default=3, help="--baseline: interleaved rounds per tree")
    parser.add_argument("--parts", nargs="+", choices=CPU_PARTS, default=list(CPU_PARTS),
                        help="cpu: which tables to run (default: all; e.g. quality schedule to recheck errors)")
    args = parser.parse_args(argv)
    if args.baseline:
        rows = compare(args.baseline, args.rounds, args.repeats)
        print_comparison(rows)
        if args.json:
            args.json.write_text(json.dumps({"baseline": rows}, indent=2))
        return
    if args.device != "cpu" or args.smoke:
        gpu_main(args)
        return
    env = {"bqq": bqq.__version__, "numba": numba.__version__, "numpy": np.__version__, "torch": torch.__version__,
           "python": platform.python_version(), "cpu_count": os.cpu_count(), "numba_threads": numba.get_num_threads(),
           "machine": platform.machine()}
    print("# BQQ solver benchmark")
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    results: dict = {"env": env}
    if "grouping" in args.parts:
        results["gemm_gflops"] = gemm = dense_gemm_gflops()
        results["grouping"] = grouping_rows(gemm)
        print_grouping(results["grouping"], gemm)
    if "speed" in args.parts:
        results["speed"] = speed_rows(args.repeats)
        print_speed(results["speed"])
    if "quality" in args.parts:
        results["quality"] = quality_rows()
        print_quality(results["quality"])
    if "schedule" in args.parts:
        results["schedule"] = schedule_rows()
        print_schedule(results["schedule"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


# --- GPU solver (bqq.solver_torch) ------------------------------------------------------------------
OFFICIAL_GPU_DEIT = (63.0, 0.324)  # official batched solver, 146 groups of 384², 50k steps, one H200
GPU_TARGETS = {"deit": (2.0, 0.3237), "4096x4096": 5.0, "llm_minutes": 15.0}  # H200-class targets
LLAMA2_7B_LAYER = [((4096, 4096), 4), ((11008, 4096), 3)]  # (shape, count) per decoder layer; 32 layers
LLAMA2_7B_LAYERS = 32
TUNE_LAUNCHES = [  # (block_rows, block_cols, num_warps, unroll) for --tune; the first is the default
    (32, 16, 1, 4), (32, 16, 1, 1), (32, 8, 1, 4), (32, 32, 1, 4), (64, 16, 2, 4), (128, 16, 4, 4),
    (64, 16, 1, 4), (16, 16, 1, 4), (64, 8, 2, 4), (128, 8, 4, 4),
]


class GpuRun:
    """Device, synchronization and the settings of one benchmark run (``--smoke``: tiny, interpreted)."""

    def __init__(self, smoke: bool, tf32: bool) -> None:
        self.smoke = smoke
        self.tf32 = tf32
        self.device = torch.device("cpu" if smoke else "cuda")
        # Smoke runs shrink every shape and schedule: they check the code path, not the speed.
        self.config = bqq.methods.bqq.BQQConfig(sweeps=4, polish_rounds=3) if smoke else bqq.methods.bqq.BQQConfig()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_mb(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda" else None

    def env(self) -> dict:
        import triton

        env = {"bqq": bqq.__version__, "torch": torch.__version__, "triton": triton.__version__,
               "numpy": np.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count()}
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            env |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                    "sm_count": props.multi_processor_count, "cuda": torch.version.cuda,
                    "capability": f"{props.major}.{props.minor}"}
        else:
            env |= {"gpu": "none: SMOKE RUN in Triton's interpreter (not a measurement)"}
        return env


def gaussian_groups(count: int, shape: tuple[int, int], first_seed: int = 1) -> np.ndarray:
    """``count`` standardized Gaussian groups, ``numpy.random.default_rng(first_seed + k)``."""
    return np.stack([numpy_matrix(*shape, first_seed + k) for k in range(count)])


def quantize_groups_timed(run: GpuRun, targets: np.ndarray, stacks: int, group_ids: list[int] | None = None,
                          tf32: bool = False):
    """(seconds, codes, peak MB) of :func:`bqq.solver_torch.quantize_groups_torch` from host float64 targets."""
    from bqq.solver import torch_backend as solver_torch

    run.sync()
    run.reset_peak()
    start = time.perf_counter()
    codes = solver_torch.quantize_groups_torch(targets, stacks, seed=0, group_ids=group_ids, config=run.config,
                                               device=run.device, tf32=tf32)
    run.sync()
    return time.perf_counter() - start, codes, run.peak_mb()


def group_rows(run: GpuRun, name: str, count: int, shape: tuple[int, int], tf32: bool = False) -> dict:
    """One stack of ``count`` same-shape groups (warm-up on 2 groups of the shape first: compilation)."""
    from bqq.solver import torch_backend as solver_torch

    targets = gaussian_groups(count, shape)
    quantize_groups_timed(run, targets[:2], 1, tf32=tf32)
    seconds, codes, peak = quantize_groups_timed(run, targets, 1, tf32=tf32)
    rank = codes.ys.shape[3]
    per_group = ((codes.dequantize().cpu().numpy() - targets) ** 2).mean(axis=(1, 2))
    estimate = (count * solver_torch.bytes_per_group(shape, rank, 1) + solver_torch.TRANSIENT_BYTES) / 2**20
    return {"name": name, "groups": count, "shape": list(shape), "rank": rank, "stacks": 1,
            "sweeps": run.config.sweeps or bqq.methods.bqq.auto_sweeps(shape, rank), "tf32": tf32,
            "seconds": seconds, "mse": float(per_group.mean()), "mse_max": float(per_group.max()),
            "peak_gpu_mb": peak, "estimate_mb": estimate}


def matrix_row(run: GpuRun, shape: tuple[int, int], bits: int, group: int, seed: int = 1) -> dict:
    """A whole matrix cut into ``group``-sized groups, ``bits`` stacks; one batch per group shape."""
    from bqq.grouping import GroupGrid
    from bqq.solver import torch_backend as solver_torch

    w = numpy_matrix(*shape, seed)
    grid = GroupGrid.build(shape, (group, group))
    targets = grid.split(w)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for g, t in enumerate(targets):
        by_shape.setdefault(t.shape, []).append(g)
    for ids in by_shape.values():  # warm-up: compile for every shape class outside the timing
        quantize_groups_timed(run, np.stack([targets[g] for g in ids[:2]]), bits, ids[:2])
    run.sync()
    run.reset_peak()
    start = time.perf_counter()
    recon: list[np.ndarray | None] = [None] * len(targets)
    estimate = solver_torch.TRANSIENT_BYTES
    for gshape, ids in by_shape.items():
        codes = solver_torch.quantize_groups_torch(np.stack([targets[g] for g in ids]), bits, seed=0, group_ids=ids,
                                                   config=run.config, device=run.device)
        for g, r in zip(ids, codes.dequantize().cpu().numpy(), strict=True):
            recon[g] = r
        estimate += len(ids) * solver_torch.bytes_per_group(gshape, codes.ys.shape[3], bits)
    run.sync()
    seconds = time.perf_counter() - start  # (includes the reconstruction copied back for the MSE)
    mse_all = float(((grid.merge(recon) - w) ** 2).mean())
    return {"name": f"{shape[0]}x{shape[1]}", "shape": list(shape), "group": group, "bits": bits,
            "groups": len(targets), "group_shapes": {f"{a}x{b}": len(v) for (a, b), v in by_shape.items()},
            "seconds": seconds, "mse": mse_all, "peak_gpu_mb": run.peak_mb(), "estimate_mb": estimate / 2**20}


def llm_projection(run: GpuRun, layer: list[tuple[tuple[int, int], int]], layers: int, bits: int, group: int,
                   measured: dict[tuple[int, int], dict]) -> dict:
    """Projected time of a whole LLM: ``layers`` × (Σ count × measured seconds of one matrix of each shape)."""
    per_layer = sum(count * measured[shape]["seconds"] for shape, count in layer)
    groups = sum(count * measured[shape]["groups"] for shape, count in layer) * layers
    return {"kind": "projection (not a measurement of a whole model)", "layers": layers, "bits": bits,
            "group": group, "layer": [[list(shape), count] for shape, count in layer], "groups": groups,
            "seconds_per_layer": per_layer, "minutes": layers * per_layer / 60,
            "seconds_per_group": per_layer * layers / groups}


def tune_rows(run: GpuRun, count: int, shape: tuple[int, int]) -> list[dict]:
    """The row-sweep kernel alone (one soft U phase of ``count`` groups) under each launch shape of
    TUNE_LAUNCHES: milliseconds per call (median of timed calls), and whether the result equals the
    default launch's bit for bit."""
    from bqq.methods.bqq import inner_dim
    from bqq_kernels.gpu import row_sweep

    m, n = shape
    l = inner_dim(shape, 1.0)
    gen = torch.Generator(device=run.device).manual_seed(0)
    dev = run.device
    ut0 = torch.rand(count, l, m, generator=gen, device=dev) * 2 - 1
    vt = torch.rand(count, l, n, generator=gen, device=dev) * 2 - 1
    x = torch.randn(count, m, n, generator=gen, device=dev)
    ht = torch.bmm(vt, x.mT)
    g = torch.bmm(vt, vt.mT)
    g.diagonal(dim1=1, dim2=2).fill_(n)
    alpha = torch.full((count,), 0.9 / l**0.5, device=dev)
    beta = torch.full((count,), 0.05, device=dev)
    rows, reference = [], None
    for block_rows, block_cols, warps, unroll in TUNE_LAUNCHES[:2] if run.smoke else TUNE_LAUNCHES:
        opts = {"block_rows": block_rows, "block_cols": block_cols, "num_warps": warps, "unroll": unroll}
        out = ut0.clone()
        row_sweep.row_sweep_triton(ht, out, g, alpha, beta, False, **opts)  # compile, and the result
        if reference is None:
            reference = out
        times = []
        for _ in range(2 if run.smoke else 20):
            ut = ut0.clone()
            run.sync()
            start = time.perf_counter()
            row_sweep.row_sweep_triton(ht, ut, g, alpha, beta, False, **opts)
            run.sync()
            times.append(time.perf_counter() - start)
        rows.append(opts | {"ms": 1e3 * statistics.median(times), "identical": bool(torch.equal(out, reference)),
                            "max_diff": float((out - reference).abs().max())})
    return rows


def gpu_main(args: argparse.Namespace) -> None:
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before bqq_kernels.gpu is imported
    elif not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA GPU (torch {torch.__version__})")
    elif args.device != "cuda":
        raise SystemExit(f"--device must be cpu or cuda, got {args.device!r}")
    run = GpuRun(args.smoke, args.tf32)
    env = run.env()
    print("# BQQ solver benchmark: GPU solver (bqq.solver_torch)" + (" — SMOKE RUN, NOT A MEASUREMENT" if args.smoke
                                                                        else ""))
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    out: dict = {"env": env, "smoke": args.smoke}
    if args.tune:
        tune_shape = (24, 24) if args.smoke else (384, 384)
        out["tune"] = tune_rows(run, 3 if args.smoke else 146, tune_shape)
        print_tune(out["tune"], 3 if args.smoke else 146, tune_shape)
    deit, small = ((3, (24, 24)), (3, (16, 16))) if args.smoke else ((146, (384, 384)), (146, (128, 128)))
    out["groups"] = [group_rows(run, "DeiT-S count", *deit), group_rows(run, "128²", *small)]
    if args.tf32:
        out["groups"].append(group_rows(run, "DeiT-S count, TF32", *deit, tf32=True))
    print_group_rows(out["groups"])
    if not args.skip_llm:
        shapes = [(48, 48), (72, 48)] if args.smoke else [(4096, 4096), (11008, 4096)]
        group = 24 if args.smoke else 384
        measured = {}
        for shape in shapes:
            measured[shape] = matrix_row(run, shape, 2, group)
        layer = [(shapes[0], 4), (shapes[1], 3)]
        out["matrices"] = list(measured.values())
        out["llm"] = llm_projection(run, layer, LLAMA2_7B_LAYERS, 2, group, measured)
        print_matrix_rows(out["matrices"], out["llm"], group)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


def _mb(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f}"


def print_tune(rows: list[dict], count: int, shape: tuple[int, int]) -> None:
    print(f"\n## Row-sweep kernel alone: one soft U phase, {count} groups of {shape[0]}x{shape[1]} "
          "(median ms per call)\n")
    print("| block_rows | block_cols | num_warps | unroll | ms | identical to default | max diff |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['block_rows']} | {r['block_cols']} | {r['num_warps']} | {r['unroll']} | {r['ms']:.3f} | "
              f"{'yes' if r['identical'] else 'no'} | {r['max_diff']:.1e} |")


def print_group_rows(rows: list[dict]) -> None:
    off_s, off_mse = OFFICIAL_GPU_DEIT
    target_s, target_mse = GPU_TARGETS["deit"]
    print("\n## One stack of many same-shape groups (standardized Gaussians; solve + exact refit)\n")
    print("| groups | shape | l | sweeps | TF32 | seconds | mean MSE | max MSE | peak GPU MB (estimate) | "
          "official (H200) | speed-up | target | met |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        deit = r["shape"] == [384, 384] and r["groups"] == 146
        if deit:
            met = "yes" if r["seconds"] <= target_s and r["mse"] <= target_mse else "NO"
            cells = (f"{off_s:.0f} s at ~{off_mse} | {off_s / r['seconds']:.0f}x | <= {target_s:.0f} s at MSE <= "
                     f"{target_mse} | {met}")
        else:
            cells = "— | — | — | —"
        print(f"| {r['groups']} | {r['shape'][0]}x{r['shape'][1]} | {r['rank']} | {r['sweeps']} | "
              f"{'yes' if r['tf32'] else 'no'} | {r['seconds']:.2f} | {r['mse']:.4f} | {r['mse_max']:.4f} | "
              f"{_mb(r['peak_gpu_mb'])} ({_mb(r['estimate_mb'])}) | {cells} |")


def print_matrix_rows(rows: list[dict], llm: dict, group: int) -> None:
    print(f"\n## Whole matrices in {group}-groups, 2 stacks (each group shape one batch)\n")
    print("| matrix | groups | group shapes | seconds | MSE | peak GPU MB (estimate) | target | met |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["shape"] == [4096, 4096]:
            target = GPU_TARGETS["4096x4096"]
            cells = f"<= {target:.0f} s | {'yes' if r['seconds'] <= target else 'NO'}"
        else:
            cells = "— | —"
        shapes = ", ".join(f"{k}: {v}" for k, v in r["group_shapes"].items())
        print(f"| {r['name']} | {r['groups']} | {shapes} | {r['seconds']:.2f} | {r['mse']:.4f} | "
              f"{_mb(r['peak_gpu_mb'])} ({_mb(r['estimate_mb'])}) | {cells} |")
    target = GPU_TARGETS["llm_minutes"]
    print(f"\nPROJECTION (not measured on a whole model): {llm['layers']} layers x "
          + " + ".join(f"{c} x {s[0]}x{s[1]}" for s, c in llm["layer"])
          + f" at {llm['bits']} stacks = {llm['groups']:,} groups: {llm['seconds_per_layer']:.1f} s per layer "
          f"(sum of the measured matrix times above) -> {llm['minutes']:.1f} minutes "
          f"({llm['seconds_per_group'] * 1e3:.1f} ms per group); target <= {target:.0f} minutes: "
          f"{'met' if llm['minutes'] <= target else 'NOT met'} (projected).")


if __name__ == "__main__":
    main()
