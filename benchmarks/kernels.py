"""Packed BQQ matmul kernels against dense matmuls on the same device, in the same run.

    python -m benchmarks.kernels [--quick] [--repeats 7] [--out DIR]               # CPU (numba)
    python -m benchmarks.kernels --device cuda [--quick] [--no-model] [--out DIR]  # CUDA (Triton)

CPU. Layer op: ``bqq_kernels.bqq_linear`` (through the torch op ``bqq::linear``, so every call pays torch's
dispatch, as a model's does) on a 2* BQQ layer (two stacks, 384×384 groups as in the paper's DeiT-S
setting, random bits: the kernel's work does not depend on their values) against
``torch.nn.functional.linear`` with an fp32 weight of the same shape, for weights 384×384, 1536×384
(fc1), 384×1536 (fc2) and 4096×4096, on 1, 8, 197 and 64×197 tokens. Each case alternates the two calls
and reports medians and the ratio bqq / dense (< 1: the packed kernel is faster). Targets:
faster than dense at 1 token, within 2× of dense at 197 tokens.

First-order codes: UQ, GPTQ and BCQ layers run one bit-plane kernel (``bqq::plane_linear``),
whose cost depends on the shape, groups and bit width only; random codes at 2, 3, 4 and 8 bits on the
same shapes (384-groups) and token counts, and 4096×4096 in GPTQ's 128-column groups, against dense
fp32. Targets: at 2 bits, <= 1.0× dense at 1 token and <= 1.5× at 197 tokens.

End to end: a DeiT-S (timm ``deit_small_patch16_224``, random init) quantized at 2 bits with the paper's
grouping by BQQ, UQ, BCQ and ``auto`` (BQQ's solver cut to one sweep: latency does not depend on the
codes, and under ``auto`` the cut only changes which layers BQQ wins; the mix is printed) against the
fp32 model, batch 1 and 8, plus BQQ's dense-rebuild reference path for context. Target: auto <= 1.2×
pure BQQ (UQ and BCQ models bound every mix ``auto`` can pick).

Outputs ``kernels.md`` and ``kernels.json`` (versions, thread counts, every timing) in ``--out``.

CUDA: medians of ``triton.testing.do_bench`` (CUDA events around back-to-back calls; eager,
so Python and launch costs count where the GPU would wait for them) and of
``triton.testing.do_bench_cudagraph`` (graph replay: GPU time alone). 2* layers with random bits on
the issue's shapes and groups (384×384, 1536×384, 384×1536 in 384-groups; 4096×4096, 11008×4096 in
128-groups) at 1, 16, 197 and (for the issue's cases) 2048 tokens, against ``F.linear`` in fp16, bf16
and fp32; ``bqq_linear`` on its automatic path in each dtype; then every path (decode, factored,
rebuild) in fp16 over a finer sweep of token counts, with the fastest path per count and the switch
points that sweep suggests (``bqq_kernels.gpu.SWITCH_POINTS``, unmeasured defaults until then). End to
end: DeiT-S in fp16, 2-bit BQQ, UQ, BCQ and auto against the fp16 model at batch 1 and 64. The
bit-plane kernel in fp16 against fp16 ``F.linear`` (target: <= 1.0× at 1 token on 4096×4096). Prints the issue's targets
beside the measured ratios and writes ``kernels_cuda.md`` and ``kernels_cuda.json`` (GPU name,
versions, every timing) in ``--out``. The official CUDA kernel's times are the issue's measurement
(H200, torch 2.11, triton 3.6), not rerun here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numba
import numpy as np
import torch
import torch.nn.functional as F

import bqq
import bqq_kernels as kernels
from bqq.format import pack_bits
from bqq.grouping import GroupGrid, balanced_splits
from bqq.methods.bqq import BQQConfig, BQQMatrix
from bqq.solver.settings import inner_dim

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = [(384, 384), (1536, 384), (384, 1536), (4096, 4096)]
TOKENS = [1, 8, 197, 64 * 197]
GROUP = 384
STACKS = 2


def random_layout(shape: tuple[int, int], group: int = GROUP, stacks: int = STACKS, seed: int = 0
                  ) -> kernels.BQQLayout:
    """A 2* BQQ layout with random bits and scalars on the paper's square groups."""
    rng = np.random.default_rng(seed)
    row_sizes, col_sizes = balanced_splits(shape[0], group), balanced_splits(shape[1], group)
    groups = []
    for m in row_sizes:
        for n in col_sizes:
            rank = round(m * n / (m + n))
            y = pack_bits(rng.integers(0, 2, (stacks, m, rank), dtype=np.uint8))
            z = pack_bits(rng.integers(0, 2, (stacks, rank, n), dtype=np.uint8))
            scales = (rng.standard_normal((stacks, 3)) * 0.01).astype(np.float32)
            groups.append(kernels.BQQGroupFactors(y, z, scales, 0.0))
    return kernels.build_layout(groups, row_sizes, col_sizes)


def random_bqq_matrix(shape: tuple[int, int], group: int | tuple[int, int] = GROUP, stacks: int = STACKS,
                      seed: int = 0, magnitude: float = 1.0) -> BQQMatrix:
    """A grouped BQQ matrix with random bits, scalars and offsets (no solver: fast), each group at the rank
    BQQ gives it; ``group`` N means N×N groups; the scalars and offsets are about ``magnitude``."""
    rng = np.random.default_rng(seed)
    grid = GroupGrid.build(shape, (group, group) if isinstance(group, int) else group)
    config = BQQConfig()
    ys, zs = [], []
    for gm, gn in grid.group_shapes():
        rank = inner_dim((gm, gn), config.rank_scale)
        ys.append(pack_bits(rng.integers(0, 2, (stacks, gm, rank))))
        zs.append(pack_bits(rng.integers(0, 2, (stacks, rank, gn))))
    scales = (rng.standard_normal((len(grid), stacks, 3)) * [1.0, 0.3, 0.3] * magnitude).astype(np.float32)
    offset = (rng.standard_normal(len(grid)) * magnitude).astype(np.float32)
    return BQQMatrix(shape, "float32", grid, stacks, 0, config, y=ys, z=zs, scales=scales, offset=offset)


def paired_medians(fns: dict[str, Callable[[], object]], repeats: int, budget_s: float = 2.0) -> dict[str, float]:
    """Median seconds per call of each function, samples interleaved so that machine noise hits all alike.

    A sample times enough back-to-back calls to last about a millisecond, so microsecond calls are not
    lost in timer and scheduling noise.
    """
    inner = {}
    for name, fn in fns.items():  # warm-up (and numba compilation), then the calls per sample
        fn()
        t = time.perf_counter()
        fn()
        inner[name] = max(1, min(1000, int(1e-3 / max(time.perf_counter() - t, 1e-7))))
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for i in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            times[name].append((time.perf_counter() - t) / inner[name])
        if i >= 2 and time.perf_counter() - start > budget_s * len(fns):
            break  # slow cases: at least 3 pairs
    return {name: statistics.median(ts) for name, ts in times.items()}


def dispatch_rows(repeats: int) -> list[dict]:
    """Per-call cost of the ways into the kernel, 384x384, one token: the numba function itself, the
    ``bqq_linear`` entry (eager inference skips the dispatcher) and the ``bqq::linear`` torch op."""
    layout = random_layout((384, 384))
    x = torch.randn(1, 384)
    fn = kernels.dispatch.resolve("cpu", None)
    with torch.inference_mode():
        med = paired_medians({"kernel function": lambda: fn(x, layout.tensors, 384),
                              "bqq_linear": lambda: kernels.bqq_linear(x, layout),
                              "torch.ops.bqq.linear": lambda: torch.ops.bqq.linear(x, *layout.tensors, None, 384, "")},
                             repeats * 5)
    return [{"path": name, "us": sec * 1e6} for name, sec in med.items()]


def layer_rows(shapes, tokens, repeats: int, group: int = GROUP) -> list[dict]:
    rows = []
    for shape in shapes:
        layout = random_layout(shape, group)
        weight = torch.randn(shape) * 0.05
        for t in tokens:
            x = torch.randn(t, shape[1])
            with torch.inference_mode():
                med = paired_medians({"bqq": lambda x=x, layout=layout: kernels.bqq_linear(x, layout),
                                      "dense": lambda x=x, weight=weight: F.linear(x, weight)}, repeats)
            row = {"shape": f"{shape[0]}x{shape[1]}", "tokens": t, "bqq_s": med["bqq"], "dense_s": med["dense"],
                   "ratio": med["bqq"] / med["dense"], "weight_kb_fp32": shape[0] * shape[1] * 4 / 1000,
                   "weight_kb_packed": layout.nbytes / 1000}
            rows.append(row)
            print(f"{row['shape']:>9} {t:>6} tokens: bqq {med['bqq'] * 1e3:9.3f} ms  dense {med['dense'] * 1e3:9.3f} ms"
                  f"  ratio {row['ratio']:.2f}", flush=True)
    return rows


# The first-order codes share one kernel: UQ and GPTQ (the same storage) and BCQ are all weighted bit planes
# (bqq_kernels.PlaneLayout), so a layer's cost depends on its shape, groups and bit width only.
FIRST_ORDER_BITS = (2, 3, 4, 8)
G128 = (1, 128)  # the LLM convention (GPTQ group 128): one row by 128 columns


def random_plane_layout(shape: tuple[int, int], bits: int, group: tuple[int, int] = (GROUP, GROUP), seed: int = 0
                        ) -> kernels.PlaneLayout:
    """A first-order layout with random planes and scalars, per-row scalars as ``group`` gives them."""
    rng = np.random.default_rng(seed)
    m, n = shape
    col_sizes = np.asarray(balanced_splits(n, group[1]), np.int32)
    nb = -(-int(col_sizes.max()) // 8)
    nb += nb % 2
    planes = rng.integers(0, 256, (len(col_sizes), bits, m, nb), dtype=np.uint8)
    for b, size in enumerate(col_sizes):  # pad bits past a block's width are zero, as in built layouts
        planes[b, ..., -(-int(size) // 8):] = 0
        if size % 8:
            planes[b, ..., size // 8] &= (1 << int(size % 8)) - 1
    tensors = kernels.PlaneTensors(
        torch.from_numpy(planes), torch.from_numpy((rng.standard_normal((len(col_sizes), m, bits)) * 0.01)
                                                   .astype(np.float32)),
        torch.from_numpy(np.zeros((len(col_sizes), m), np.float32)),
        torch.from_numpy(np.concatenate([[0], np.cumsum(col_sizes)[:-1]]).astype(np.int32)),
        torch.from_numpy(col_sizes))
    return kernels.PlaneLayout(shape, tensors)


def first_order_rows(cases, repeats: int) -> list[dict]:
    """Per (shape, group, bits, tokens): the bit-plane kernel against F.linear with an fp32 weight."""
    rows = []
    for shape, group, bits_list, tokens in cases:
        weight = torch.randn(shape) * 0.05
        for bits in bits_list:
            layout = random_plane_layout(shape, bits, group)
            for t in tokens:
                x = torch.randn(t, shape[1])
                with torch.inference_mode():
                    med = paired_medians({"planes": lambda x=x, layout=layout: kernels.bqq_linear(x, layout),
                                          "dense": lambda x=x, weight=weight: F.linear(x, weight)}, repeats)
                row = {"shape": f"{shape[0]}x{shape[1]}", "group": f"{group[0]}x{group[1]}", "bits": bits,
                       "tokens": t, "planes_s": med["planes"], "dense_s": med["dense"],
                       "ratio": med["planes"] / med["dense"], "weight_kb_packed": layout.nbytes / 1000}
                rows.append(row)
                print(f"{row['shape']:>9} ({row['group']}) {bits}-bit {t:>6} tokens: "
                      f"planes {med['planes'] * 1e3:9.3f} ms  dense {med['dense'] * 1e3:9.3f} ms  "
                      f"ratio {row['ratio']:.2f}", flush=True)
    return rows


def first_order_cases(quick: bool) -> list:
    """(shape, group, bit widths, token counts): every shape in the paper's 384-groups at every width and
    token count, and 4096x4096 in 128-column groups (GPTQ's convention)."""
    if quick:
        return [(SHAPES[1], (GROUP, GROUP), (2,), (1, 197))]
    return ([(shape, (GROUP, GROUP), FIRST_ORDER_BITS, TOKENS) for shape in SHAPES]
            + [((4096, 4096), G128, (2, 4), (1, 8, 197))])


# Settings per DeiT-S variant: 2 bits (2 stacks for BQQ) with the paper's grouping; BQQ's solver cut to one
# sweep, which changes the codes but not the latency (and under "auto" only which layers BQQ wins).
DEIT_METHODS = {"bqq": {"method": "bqq", "sweeps": 1, "polish_rounds": 0}, "uq": {"method": "uq"},
                "bcq": {"method": "bcq"}, "auto": {"method": "auto", "sweeps": 1, "polish_rounds": 0}}


def deit_models(methods) -> dict[str, torch.nn.Module]:
    """The fp32 DeiT-S (timm ``deit_small_patch16_224``, random init) and one 2-bit copy per method."""
    from bqq.compat import import_timm

    timm = import_timm()
    torch.manual_seed(0)
    fp = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    models = {"fp32": fp}
    for name in methods:
        quant = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
        quant.load_state_dict(fp.state_dict())
        start = time.perf_counter()
        bqq.quantize(quant, bits=STACKS, progress=False, **DEIT_METHODS[name])
        picks = method_counts(quant)
        print(f"DeiT-S {name} quantized in {time.perf_counter() - start:.0f} s (timing only); layers: {picks}",
              flush=True)
        models[name] = quant
    return models


def method_counts(model: torch.nn.Module) -> dict[str, int]:
    """How many quantized layers of ``model`` hold each method (what "auto" chose)."""
    counts: dict[str, int] = {}
    for _, layer in bqq.ptq.quantized_layers(model):
        counts[layer.method] = counts.get(layer.method, 0) + 1
    return dict(sorted(counts.items()))


def model_rows(batches, repeats: int) -> list[dict]:
    """DeiT-S forwards, seconds: fp32, 2-bit BQQ, UQ, BCQ and ``auto`` (each on its kernels), and BQQ on the
    dense-rebuild reference path for context."""
    models = deit_models(tuple(DEIT_METHODS))
    layers = [m for _, m in bqq.ptq.quantized_layers(models["bqq"])]

    def reference(x):
        for m in layers:
            m.backend = "reference"
        try:
            return models["bqq"](x)
        finally:
            for m in layers:
                m.backend = None

    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, 224, 224)
        fns = {name: (lambda x=x, model=model: model(x)) for name, model in models.items()}
        with torch.inference_mode():
            med = paired_medians({**fns, "reference": lambda x=x: reference(x)}, repeats, budget_s=4.0)
        row = {"batch": batch, **{f"{name}_s": sec for name, sec in med.items()},
               "ratio": med["bqq"] / med["fp32"], "auto_over_bqq": med["auto"] / med["bqq"],
               "slowest_first_order_over_bqq": max(med["uq"], med["bcq"]) / med["bqq"],
               "auto_methods": method_counts(models["auto"])}
        rows.append(row)
        print(f"DeiT-S batch {batch}: " + ", ".join(f"{name} {sec * 1e3:.1f} ms" for name, sec in med.items())
              + f"; auto/bqq {row['auto_over_bqq']:.2f}", flush=True)
    return rows


# CPU targets for 2-bit first-order layers: ratio to dense fp32 by token count
FIRST_ORDER_TARGETS = {1: 1.0, 197: 1.5}


def markdown(layers: list[dict], models: list[dict], env: dict, dispatch: list[dict] | None = None,
             first_order: list[dict] | None = None) -> str:
    lines = [f"`{' '.join(f'{k}={v}' for k, v in env.items())}`", "",
             "| weight (out×in) | tokens | BQQ 2* kernel (ms) | dense fp32 (ms) | ratio | target | met |",
             "|---|---|---|---|---|---|---|"]
    for r in layers:
        target = {1: 1.0, 197: 2.0}.get(r["tokens"])
        met = "" if target is None else ("yes" if r["ratio"] <= target else "no")
        lines.append(f"| {r['shape']} | {r['tokens']} | {r['bqq_s'] * 1e3:.3f} | {r['dense_s'] * 1e3:.3f} | "
                     f"{r['ratio']:.2f} | {'' if target is None else f'<= {target:g}'} | {met} |")
    if first_order:
        lines += ["", "First-order codes (UQ, GPTQ, BCQ: one bit-plane kernel, `bqq::plane_linear`), random codes:", "",
                  "| weight (out×in) | group | bits | tokens | planes kernel (ms) | dense fp32 (ms) | ratio | target "
                  "| met |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in first_order:
            target = FIRST_ORDER_TARGETS.get(r["tokens"]) if r["bits"] == 2 else None
            met = "" if target is None else ("yes" if r["ratio"] <= target else "no")
            lines.append(f"| {r['shape']} | {r['group']} | {r['bits']} | {r['tokens']} | {r['planes_s'] * 1e3:.3f} | "
                         f"{r['dense_s'] * 1e3:.3f} | {r['ratio']:.2f} | {'' if target is None else f'<= {target:g}'} "
                         f"| {met} |")
    if models:
        lines += ["", "DeiT-S (random init), ms per forward; every quantized model on its kernels:", "",
                  "| batch | fp32 | BQQ 2* | UQ 2-bit | BCQ 2-bit | auto 2 | BQQ / fp32 | auto / BQQ (target <= 1.2) "
                  "| slowest first-order / BQQ | BQQ dense-rebuild reference | auto's methods |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in models:
            methods = ", ".join(f"{k} {v}" for k, v in r["auto_methods"].items())
            lines.append(f"| {r['batch']} | {r['fp32_s'] * 1e3:.1f} | {r['bqq_s'] * 1e3:.1f} | {r['uq_s'] * 1e3:.1f} | "
                         f"{r['bcq_s'] * 1e3:.1f} | {r['auto_s'] * 1e3:.1f} | {r['ratio']:.2f} | "
                         f"{r['auto_over_bqq']:.2f} ({'met' if r['auto_over_bqq'] <= 1.2 else 'not met'}) | "
                         f"{r['slowest_first_order_over_bqq']:.2f} | {r['reference_s'] * 1e3:.1f} | {methods} |")
    if dispatch:
        lines += ["", "| 384x384, 1 token, inference mode | µs per call |", "|---|---|"]
        lines += [f"| {r['path']} | {r['us']:.1f} |" for r in dispatch]
    return "\n".join(lines) + "\n"


# --- CUDA ------------------------------------------------------------------------------------------------

# (weight shape, square group, token counts): the table, plus 16 and 197 tokens for every shape
CUDA_CASES = [((384, 384), 384, (1, 16, 197)), ((1536, 384), 384, (1, 16, 197, 2048)),
              ((384, 1536), 384, (1, 16, 197)), ((4096, 4096), 128, (1, 16, 197, 2048)),
              ((11008, 4096), 128, (1, 16, 197, 2048))]
CUDA_QUICK = [((384, 384), 384, (1, 197)), ((4096, 4096), 128, (1, 197))]
SWEEP_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 197, 512, 2048)  # every path, fp16: where the paths cross
CUDA_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DEIT_SHAPES = ("384x384", "1536x384", "384x1536")
LARGE_SHAPES = ("4096x4096", "11008x4096")
# The paper authors' CUDA extension, µs, measured once on one H200 (torch 2.11, triton 3.6); not rerun here.
OFFICIAL_US = {("384x384", 1): 25.1, ("384x384", 197): 16.1, ("1536x384", 1): 25.4, ("1536x384", 2048): 36.6,
               ("384x1536", 1): 25.7, ("4096x4096", 1): 23.6, ("4096x4096", 16): 282.4, ("4096x4096", 197): 289.6,
               ("4096x4096", 2048): 360.2, ("11008x4096", 1): 29.4, ("11008x4096", 2048): 962.1}
MODEL_TARGET = 1.3  # DeiT-S 2* in fp16 at batch 64: <= 1.3x the fp16 model

Timer = Callable[[Callable[[], object]], float]  # seconds per call


def cuda_timers() -> tuple[Timer, Timer]:
    """(eager, graph-replay) timers: medians of triton.testing.do_bench / do_bench_cudagraph, in seconds."""
    from triton.testing import do_bench, do_bench_cudagraph

    return (lambda fn: do_bench(fn, return_mode="median") * 1e-3,
            lambda fn: do_bench_cudagraph(fn, return_mode="median") * 1e-3)


def _graph_time(graph: Timer | None, fn: Callable[[], object]) -> float | None:
    """Graph-replay seconds, or None without a graph timer or if capture fails (the reason is printed)."""
    if graph is None:
        return None
    try:
        return graph(fn)
    except Exception as exc:  # a failed capture is a finding to report, not a reason to stop the run
        print(f"  CUDA graph capture failed: {type(exc).__name__}: {exc}", flush=True)
        return None


def cuda_layer_rows(cases, device: str, eager: Timer, graph: Timer | None = None) -> list[dict]:
    """Per case: F.linear in fp16/bf16/fp32 and bqq_linear (automatic path) in each dtype, seconds per call."""
    from bqq_kernels.gpu import choose_path

    rows = []
    for shape, group, tokens in cases:
        layout = random_layout(shape, group).to(device)
        weights = {name: (torch.randn(shape, device=device) * 0.05).to(dt) for name, dt in CUDA_DTYPES.items()}
        for t in tokens:
            x32 = torch.randn(t, shape[1], device=device)
            row = {"shape": f"{shape[0]}x{shape[1]}", "group": group, "tokens": t,
                   "path": choose_path(t, layout.tensors)}
            with torch.inference_mode():
                for name, dt in CUDA_DTYPES.items():
                    x = x32.to(dt)
                    row[f"dense_{name}_s"] = eager(lambda x=x, w=weights[name]: F.linear(x, w))
                    row[f"bqq_{name}_s"] = eager(lambda x=x, lay=layout: kernels.bqq_linear(x, lay))
                x = x32.half()
                row["dense_fp16_graph_s"] = _graph_time(graph, lambda x=x, w=weights["fp16"]: F.linear(x, w))
                row["bqq_fp16_graph_s"] = _graph_time(graph, lambda x=x, lay=layout: kernels.bqq_linear(x, lay))
            row["ratio_fp16"] = row["bqq_fp16_s"] / row["dense_fp16_s"]
            official = OFFICIAL_US.get((row["shape"], t))
            row["official_s"] = None if official is None else official * 1e-6
            rows.append(row)
            print(f"{row['shape']:>11} {t:>5} tokens ({row['path']}): bqq fp16 {row['bqq_fp16_s'] * 1e6:9.1f} us, "
                  f"fp16 {row['dense_fp16_s'] * 1e6:8.1f} us, ratio {row['ratio_fp16']:.2f}", flush=True)
    return rows


def path_sweep_rows(cases, tokens, device: str, eager: Timer) -> list[dict]:
    """Every path of the Triton kernel (``bqq_linear_triton(path=...)``) in fp16 at each token count."""
    from bqq_kernels.gpu import PATHS, bqq_linear_triton, choose_path

    rows = []
    for shape, group, _ in cases:
        layout = random_layout(shape, group).to(device)
        for t in tokens:
            x = torch.randn(t, shape[1], device=device).half()
            row = {"shape": f"{shape[0]}x{shape[1]}", "group": group, "tokens": t, "l_max": layout.z.shape[3],
                   "chosen": choose_path(t, layout.tensors)}
            with torch.inference_mode():
                for path in PATHS:
                    row[f"{path}_s"] = eager(lambda p=path, x=x, w=layout.tensors, m=shape[0]:
                                             bqq_linear_triton(x, w, m, path=p))
            row["fastest"] = min(PATHS, key=lambda p, row=row: row[f"{p}_s"])
            rows.append(row)
            print(f"{row['shape']:>11} {t:>5} tokens: " + ", ".join(f"{p} {row[f'{p}_s'] * 1e6:.1f} us" for p in PATHS),
                  flush=True)
    return rows


STEP_CHOICES = (2, 4, 6, 8, 16, 1 << 20)  # Y_STEPS_PER_PROGRAM values tried at one token (the last: no split)


def decode_step_rows(cases, device: str, eager: Timer, steps=STEP_CHOICES) -> list[dict]:
    """One-token decode in fp16 for each ``Y_STEPS_PER_PROGRAM`` in ``steps`` (seconds per call)."""
    from bqq_kernels.gpu import bqq_linear_triton, bqq_matmul

    rows, before = [], bqq_matmul.Y_STEPS_PER_PROGRAM
    try:
        for shape, group, _ in cases:
            layout = random_layout(shape, group).to(device)
            x = torch.randn(1, shape[1], device=device).half()
            row = {"shape": f"{shape[0]}x{shape[1]}", "group": group}
            for step in steps:
                bqq_matmul.Y_STEPS_PER_PROGRAM = step
                with torch.inference_mode():
                    row[f"steps_{step}_s"] = eager(lambda x=x, w=layout.tensors, m=shape[0]:
                                                   bqq_linear_triton(x, w, m, path="decode"))
            row["fastest_steps"] = min(steps, key=lambda st, row=row: row[f"steps_{st}_s"])
            row["current"] = before
            rows.append(row)
            print(f"{row['shape']:>11} 1 token decode, steps per program: " +
                  ", ".join(f"{st}: {row[f'steps_{st}_s'] * 1e6:.1f} us" for st in steps), flush=True)
    finally:
        bqq_matmul.Y_STEPS_PER_PROGRAM = before
    return rows


def suggest_switch_points(sweep: list[dict]) -> dict:
    """The switch points (``bqq_kernels.gpu.SwitchPoints`` fields) under which :func:`choose_path`'s rule loses
    least against the fastest path over the sweep (geometric mean of time taken / fastest time), with the
    mean slowdown of that choice and of the current setting. Coarse: crossovers lie between measured counts."""
    from bqq_kernels.gpu import SWITCH_POINTS, SwitchPoints, path_for

    def slowdown(points: SwitchPoints) -> float:
        logs = [math.log(r[f"{path_for(r['tokens'], r['l_max'], points)}_s"] / r[f"{r['fastest']}_s"]) for r in sweep]
        return math.exp(sum(logs) / len(logs))

    candidates = [SwitchPoints(d, q) for d in sorted({0, *(r["tokens"] for r in sweep)})
                  for q in sorted({0.0, *(r["tokens"] / r["l_max"] for r in sweep)})]
    best = min(candidates, key=lambda c: (slowdown(c), c.decode_max_tokens, c.factored_max_tokens_per_rank))
    return {"decode_max_tokens": best.decode_max_tokens,
            "factored_max_tokens_per_rank": round(best.factored_max_tokens_per_rank, 4),
            "mean_slowdown": slowdown(best), "current": asdict(SWITCH_POINTS),
            "current_mean_slowdown": slowdown(SWITCH_POINTS)}


def cuda_model_rows(batches, eager: Timer, graph: Timer | None) -> list[dict]:
    """DeiT-S in fp16 on the GPU, seconds per forward: the fp16 model and its 2-bit BQQ, UQ, BCQ and auto
    copies (:data:`DEIT_METHODS`), each on its kernels."""
    models = {name: model.cuda().half() for name, model in deit_models(tuple(DEIT_METHODS)).items()}
    models["fp16"] = models.pop("fp32")
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, 224, 224, device="cuda").half()
        row = {"batch": batch, "auto_methods": method_counts(models["auto"])}
        with torch.inference_mode():
            for name, model in models.items():
                row[f"{name}_s"] = eager(lambda x=x, model=model: model(x))
            for name in ("bqq", "fp16"):
                row[f"{name}_graph_s"] = _graph_time(graph, lambda x=x, model=models[name]: model(x))
        row["ratio"] = row["bqq_s"] / row["fp16_s"]
        row["auto_over_bqq"] = row["auto_s"] / row["bqq_s"]
        rows.append(row)
        print(f"DeiT-S fp16 batch {batch}: " + ", ".join(f"{name} {row[f'{name}_s'] * 1e3:.2f} ms" for name in models)
              + f" (bqq/fp16 {row['ratio']:.2f}, auto/bqq {row['auto_over_bqq']:.2f})", flush=True)
    return rows


# (weight shape, group, bit widths, token counts) for the bit-plane kernel on a GPU
CUDA_PLANE_CASES = [((384, 384), (GROUP, GROUP), (2,), (1, 197)), ((1536, 384), (GROUP, GROUP), (2, 4), (1, 197)),
                    ((4096, 4096), G128, (2, 3, 4, 8), (1, 16, 197, 2048)), ((11008, 4096), G128, (2, 4), (1, 2048))]
CUDA_PLANE_QUICK = [((4096, 4096), G128, (2,), (1, 197))]


def cuda_plane_rows(cases, device: str, eager: Timer) -> list[dict]:
    """The bit-plane kernel (UQ, GPTQ, BCQ) in fp16 against F.linear in fp16, seconds per call."""
    rows = []
    for shape, group, bits_list, tokens in cases:
        weight = (torch.randn(shape, device=device) * 0.05).half()
        for bits in bits_list:
            layout = random_plane_layout(shape, bits, group).to(device)
            for t in tokens:
                x = torch.randn(t, shape[1], device=device).half()
                with torch.inference_mode():
                    planes = eager(lambda x=x, lay=layout: kernels.bqq_linear(x, lay))
                    dense = eager(lambda x=x, w=weight: F.linear(x, w))
                row = {"shape": f"{shape[0]}x{shape[1]}", "group": f"{group[0]}x{group[1]}", "bits": bits,
                       "tokens": t, "planes_fp16_s": planes, "dense_fp16_s": dense, "ratio_fp16": planes / dense}
                rows.append(row)
                print(f"{row['shape']:>11} ({row['group']}) {bits}-bit {t:>5} tokens: "
                      f"planes fp16 {planes * 1e6:9.1f} us, fp16 {dense * 1e6:8.1f} us, "
                      f"ratio {row['ratio_fp16']:.2f}", flush=True)
    return rows


def layer_targets(row: dict) -> list[tuple[str, bool]]:
    """The GPU targets that apply to a layer row, each with whether this run met it."""
    t, shape, ratio, us = row["tokens"], row["shape"], row["ratio_fp16"], row["bqq_fp16_s"] * 1e6
    targets = []
    if t == 1 and shape in LARGE_SHAPES:
        targets += [("<= 1.0x fp16", ratio <= 1.0), ("stretch <= 0.5x fp16", ratio <= 0.5)]
    if t == 1 and shape in DEIT_SHAPES:
        targets.append(("<= 10 us", us <= 10.0))
    if t in (197, 2048):
        targets.append(("<= 1.5x fp16", ratio <= 1.5))
    if row["official_s"] is not None:
        targets.append(("faster than official", row["bqq_fp16_s"] < row["official_s"]))
    return targets


def _us(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e6:.1f}"


def cuda_markdown(layers: list[dict], sweep: list[dict], models: list[dict], env: dict,
                  suggestion: dict | None = None, steps: list[dict] | None = None,
                  planes: list[dict] | None = None) -> str:
    lines = [f"`{' '.join(f'{k}={v}' for k, v in env.items())}`", "",
             "Layers, µs per call (medians of triton.testing.do_bench; bqq = `bqq_linear` on its automatic path; "
             "official = the issue's measurement, not rerun):", "",
             "| weight (group) | tokens | path | fp16 | bf16 | fp32 | bqq fp16 | bqq bf16 | bqq fp32 | bqq/fp16 | "
             "official | target | met |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in layers:
        targets = layer_targets(r)
        lines.append(f"| {r['shape']} ({r['group']}) | {r['tokens']} | {r['path']} | {_us(r['dense_fp16_s'])} | "
                     f"{_us(r['dense_bf16_s'])} | {_us(r['dense_fp32_s'])} | {_us(r['bqq_fp16_s'])} | "
                     f"{_us(r['bqq_bf16_s'])} | {_us(r['bqq_fp32_s'])} | {r['ratio_fp16']:.2f} | "
                     f"{_us(r['official_s'])} | {'; '.join(t for t, _ in targets)} | "
                     f"{'; '.join('yes' if ok else 'no' for _, ok in targets)} |")
    if any(r.get("bqq_fp16_graph_s") for r in layers):
        lines += ["", "Graph replay (triton.testing.do_bench_cudagraph: GPU time without launch costs), fp16, µs:", "",
                  "| weight | tokens | bqq | fp16 | ratio |", "|---|---|---|---|---|"]
        for r in layers:
            b, d = r.get("bqq_fp16_graph_s"), r.get("dense_fp16_graph_s")
            lines.append(f"| {r['shape']} | {r['tokens']} | {_us(b)} | {_us(d)} | "
                         f"{'' if not (b and d) else f'{b / d:.2f}'} |")
    if sweep:
        lines += ["", "Every path in fp16, µs per call (`bqq_linear_triton(x, ..., path=...)`):", "",
                  "| weight | tokens | decode | factored | rebuild | fastest | chosen now |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['shape']} | {r['tokens']} | {_us(r['decode_s'])} | {_us(r['factored_s'])} | "
                  f"{_us(r['rebuild_s'])} | {r['fastest']} | {r['chosen']} |" for r in sweep]
    if suggestion:
        lines += ["", f"Switch points that lose least on this sweep: decode_max_tokens="
                  f"{suggestion['decode_max_tokens']}, factored_max_tokens_per_rank="
                  f"{suggestion['factored_max_tokens_per_rank']} (mean slowdown against the fastest path "
                  f"{suggestion['mean_slowdown']:.3f}x; current {suggestion['current']}: "
                  f"{suggestion['current_mean_slowdown']:.3f}x)."]
    if steps:
        choices = [int(k[6:-2]) for k in steps[0] if k.startswith("steps_")]
        names = ["no split" if c >= 1 << 20 else str(c) for c in choices]
        lines += ["", "Decode at 1 token (fp16), µs, by `bqq_kernels.gpu.bqq_matmul.Y_STEPS_PER_PROGRAM` "
                  f"(now {steps[0].get('current', '')}):", "",
                  f"| weight | {' | '.join(names)} | fastest |", "|---|" + "---|" * (len(choices) + 1)]
        for r in steps:
            fastest = "no split" if r["fastest_steps"] >= 1 << 20 else r["fastest_steps"]
            lines.append(f"| {r['shape']} | {' | '.join(_us(r[f'steps_{c}_s']) for c in choices)} | {fastest} |")
    if planes:
        lines += ["", "First-order codes (UQ, GPTQ, BCQ: one bit-plane kernel), fp16, µs per call, random codes:", "",
                  "| weight (group) | bits | tokens | planes | fp16 | ratio | target | met |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in planes:
            target = r["tokens"] == 1 and r["shape"] == "4096x4096"  # target: decode <= fp16 cuBLAS
            met = "" if not target else ("yes" if r["ratio_fp16"] <= 1.0 else "no")
            lines.append(f"| {r['shape']} ({r['group']}) | {r['bits']} | {r['tokens']} | {_us(r['planes_fp16_s'])} | "
                         f"{_us(r['dense_fp16_s'])} | {r['ratio_fp16']:.2f} | {'<= 1.0' if target else ''} | {met} |")
    if models:
        lines += ["", "| DeiT-S fp16 batch | BQQ 2* (ms) | fp16 model (ms) | ratio | target | met | UQ 2-bit (ms) | "
                  "BCQ 2-bit (ms) | auto 2 (ms) | auto / BQQ | auto's methods | BQQ graph (ms) | fp16 graph (ms) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in models:
            target = f"<= {MODEL_TARGET}" if r["batch"] == 64 else ""
            met = "" if not target else ("yes" if r["ratio"] <= MODEL_TARGET else "no")
            graphs = [("" if r[k] is None else f"{r[k] * 1e3:.2f}") for k in ("bqq_graph_s", "fp16_graph_s")]
            methods = ", ".join(f"{k} {v}" for k, v in r["auto_methods"].items())
            lines.append(f"| {r['batch']} | {r['bqq_s'] * 1e3:.2f} | {r['fp16_s'] * 1e3:.2f} | {r['ratio']:.2f} | "
                         f"{target} | {met} | {r['uq_s'] * 1e3:.2f} | {r['bcq_s'] * 1e3:.2f} | "
                         f"{r['auto_s'] * 1e3:.2f} | "
                         f"{r['auto_over_bqq']:.2f} | {methods} | {graphs[0]} | {graphs[1]} |")
    return "\n".join(lines) + "\n"


def cuda_env() -> dict:
    import triton

    props = torch.cuda.get_device_properties(0)
    return {"bqq": bqq.__version__, "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "gpu": props.name.replace(" ", "_"),
            "capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count}


def main_cuda(args: argparse.Namespace) -> dict:
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    from bqq_kernels.gpu import interpreted

    if interpreted():
        raise SystemExit("TRITON_INTERPRET=1 is set: unset it to time compiled kernels")
    out = args.out or (Path("out/kernels-cuda-quick") if args.quick else RESULTS)
    env = cuda_env()
    eager, graph = cuda_timers()
    wall = time.perf_counter()
    cases = CUDA_QUICK if args.quick else CUDA_CASES
    layers = cuda_layer_rows(cases, "cuda", eager, graph)
    sweep = path_sweep_rows(cases, (1, 16, 197) if args.quick else SWEEP_TOKENS, "cuda", eager)
    suggestion = suggest_switch_points(sweep)
    steps = decode_step_rows(cases, "cuda", eager)
    planes = cuda_plane_rows(CUDA_PLANE_QUICK if args.quick else CUDA_PLANE_CASES, "cuda", eager)
    models = [] if args.quick or args.no_model else cuda_model_rows([1, 64], eager, graph)
    wall = time.perf_counter() - wall
    text = cuda_markdown(layers, sweep, models, env, suggestion, steps, planes)
    print(text)
    print(f"wall time {wall:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.kernels --device cuda" + (" --quick" if args.quick else "")
    (out / "kernels_cuda.md").write_text(text + f"\nCommand: `{command}`; wall time {wall:.0f} s.\n")
    doc = {"env": env, "layers": layers, "paths": sweep, "suggested_switch_points": suggestion,
           "decode_steps": steps, "planes": planes, "models": models, "wall_s": wall, "stacks": STACKS}
    (out / "kernels_cuda.json").write_text(json.dumps(doc, indent=2))
    return doc


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="two shapes, 1 and 197 tokens (cuda: and 16 in the "
                   "path sweep), no model")
    p.add_argument("--repeats", type=int, default=7, help="cpu: interleaved pairs per case")
    p.add_argument("--no-model", action="store_true", help="cuda: skip DeiT-S (it runs the CPU solver first)")
    p.add_argument("--out", type=Path, default=None,
                   help="default: results/ (--quick: out/kernels-quick/ or out/kernels-cuda-quick/)")
    args = p.parse_args(argv)
    if args.device == "cuda":
        return main_cuda(args)
    out = args.out or (Path("out/kernels-quick") if args.quick else RESULTS)
    env = {"bqq": bqq.__version__, "torch": torch.__version__, "numba": numba.__version__,
           "torch_threads": torch.get_num_threads(), "numba_threads": numba.get_num_threads(),
           "cpu_count": os.cpu_count(), "machine": platform.machine()}
    wall = time.perf_counter()
    shapes, tokens = (SHAPES[:2], [1, 197]) if args.quick else (SHAPES, TOKENS)
    layers = layer_rows(shapes, tokens, args.repeats)
    first_order = first_order_rows(first_order_cases(args.quick), args.repeats)
    models = [] if args.quick else model_rows([1, 8], args.repeats)
    dispatch = dispatch_rows(args.repeats)
    wall = time.perf_counter() - wall
    text = markdown(layers, models, env, dispatch, first_order)
    print(text)
    print(f"wall time {wall:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.kernels" + (" --quick" if args.quick else "")
    (out / "kernels.md").write_text(text + f"\nCommand: `{command}`; wall time {wall:.0f} s.\n")
    doc = {"env": env, "layers": layers, "first_order": first_order, "models": models, "dispatch": dispatch,
           "wall_s": wall, "group": GROUP, "stacks": STACKS}
    (out / "kernels.json").write_text(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
