"""One-stack CPU solve times of this tree against an earlier git revision of bqq, measured in one run.

    python benchmarks/solver.py --baseline [REF] [--rounds 3] [--repeats 3]

REF (default :data:`ISSUE_23_BASELINE`, the code when the solver issue was filed) is checked out into a
temporary ``git worktree``. Each tree is timed in its own subprocess that imports that tree's ``bqq`` and
its ``kernels/`` as ``bqq_kernels`` (whatever is installed) and compiles into a numba cache of its own, made
fresh for this run (as on a new install), with one warm-up solve, then times
``--repeats`` solves of ``bqq.compress(w, bits=1)`` (default settings) on the same ``default_rng(1)``
standardized Gaussian. The two trees alternate for ``--rounds`` rounds, so load on a shared machine falls
on both alike; the medians over all timed solves and their ratio are reported, with each tree's MSE (the
codes are meant to be identical, so the MSEs should be too).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ISSUE_23_BASELINE = "b8245e04fe26487f6c5e8f6ab03c82c538cb8f1c"  # main before "One BQQ solver package"
ROOT = Path(__file__).resolve().parent.parent
SHAPES = ((384, 384), (128, 128))
SPEEDUP_TARGET = 2.0  # target: 384² one stack at least 2x faster than the baseline, at MSE <= 0.3237

# Run in a subprocess: argv = tree, m, n, repeats. Prints one JSON line.
_TIMER = r"""
import importlib.util, json, statistics, sys, time
tree, m, n, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
spec = importlib.util.spec_from_file_location("bqq_kernels", f"{tree}/kernels/__init__.py",
                                              submodule_search_locations=[f"{tree}/kernels"])
kernels = importlib.util.module_from_spec(spec)
sys.modules["bqq_kernels"] = kernels
spec.loader.exec_module(kernels)
sys.path.insert(0, tree)
import numpy as np
import bqq
assert bqq.__file__.startswith(tree), bqq.__file__
w = np.random.default_rng(1).standard_normal((m, n))
w = (w - w.mean()) / w.std()
bqq.compress(w, bits=1)  # warm-up: numba compilation
times = []
for _ in range(repeats):
    start = time.perf_counter()
    q = bqq.compress(w, bits=1)
    times.append(time.perf_counter() - start)
mse = float(((q.dequantize().double().numpy() - w) ** 2).mean())
print(json.dumps({"times": times, "mse": mse}))
"""


def _time_tree(tree: Path, shape: tuple[int, int], repeats: int, cache: Path) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))  # each tree compiles into its own, fresh cache
    out = subprocess.run([sys.executable, "-c", _TIMER, str(tree), str(shape[0]), str(shape[1]), str(repeats)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"timing {tree} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(ref: str = ISSUE_23_BASELINE, rounds: int = 3, repeats: int = 3) -> list[dict]:
    """Per shape: median seconds per stack of ``ref`` and of this tree, their ratio and both MSEs."""
    with tempfile.TemporaryDirectory(prefix="bqq-baseline-") as tmp:
        base = Path(tmp) / "tree"
        added = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), ref],
                               capture_output=True, text=True)
        if added.returncode != 0:
            raise RuntimeError(f"cannot check out {ref!r} (a git checkout of bqq is needed): {added.stderr.strip()}")
        try:
            rows = []
            for shape in SHAPES:
                runs: dict[str, list[dict]] = {"baseline": [], "current": []}
                for _ in range(rounds):
                    runs["baseline"].append(_time_tree(base, shape, repeats, Path(tmp) / "cache-baseline"))
                    runs["current"].append(_time_tree(ROOT, shape, repeats, Path(tmp) / "cache-current"))
                row = {"shape": list(shape), "baseline_ref": ref}
                for name, results in runs.items():
                    row[f"{name}_s"] = statistics.median(t for r in results for t in r["times"])
                    row[f"{name}_all_s"] = [t for r in results for t in r["times"]]
                    row[f"{name}_mse"] = results[-1]["mse"]
                row["speedup"] = row["baseline_s"] / row["current_s"]
                rows.append(row)
            return rows
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)


def print_comparison(rows: list[dict]) -> None:
    print(f"\n## Against {rows[0]['baseline_ref'][:10]} (one run, interleaved; median seconds per stack)\n")
    print("| shape | baseline s | current s | speed-up | baseline MSE | current MSE | target |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        target = ""
        if tuple(r["shape"]) == (384, 384):
            met = r["speedup"] >= SPEEDUP_TARGET and r["current_mse"] <= 0.3237
            target = f">= {SPEEDUP_TARGET:.0f}x at MSE <= 0.3237: {'met' if met else 'not met'}"
        print(f"| {r['shape'][0]}x{r['shape'][1]} | {r['baseline_s']:.2f} | {r['current_s']:.2f} | "
              f"{r['speedup']:.2f}x | {r['baseline_mse']:.4f} | {r['current_mse']:.4f} | {target} |")
