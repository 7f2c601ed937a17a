"""Render the documentation's results tables from the committed result files.

    python -m benchmarks.report            # rewrite every generated block in README.md and docs/*.md
    python -m benchmarks.report --check    # exit 1, listing the blocks that differ, if any is stale
    python -m benchmarks.report --list     # every block, the files it reads and the command that writes them

A generated block is the text between ``<!-- report:NAME -->`` and ``<!-- /report -->`` in a Markdown
file; everything outside the markers is hand-written and left alone. ``BLOCKS`` maps each NAME to the
result files it reads (JSON, relative to the repository root), the command that writes them, and a small
function of the loaded JSON that returns Markdown. Every figure in a block comes from those files; each
block states the command, the machine and (where the file records one) the date once, above its table.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = ("README.md", "docs/*.md")
MARKER = re.compile(r"<!-- report:([\w.-]+) -->\n(.*?)<!-- /report -->", re.S)


class ReportError(Exception):
    """A block that cannot be rendered: unknown name, missing or unreadable result file."""


@dataclass(frozen=True)
class Block:
    name: str
    sources: tuple[str, ...]
    command: str
    render: Callable[..., str]


BLOCKS: dict[str, Block] = {}


def block(name: str, *sources: str, command: str):
    """Register ``fn(*loaded_sources) -> markdown`` as block ``name``."""

    def register(fn):
        BLOCKS[name] = Block(name, sources, command, fn)
        return fn

    return register


# ---------------------------------------------------------------- formatting helpers


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def f(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def ratio(x, digits: int = 2) -> str:
    return f"{x:.{digits}f}×"


def shape(s) -> str:
    return "×".join(str(v) for v in s) if isinstance(s, list | tuple) else str(s).replace("x", "×")


def machine(env: dict | None) -> str:
    env = env or {}
    parts = []
    cores = env.get("cpu_count")
    cpu = env.get("cpu") or env.get("machine")
    if cores and cpu:
        parts.append(f"{cores}-core {cpu}")
    elif cpu:
        parts.append(str(cpu))
    threads = env.get("threads") or env.get("numba_threads") or env.get("torch_threads")
    if threads:
        parts.append(f"{threads} thread{'s' if threads != 1 else ''}")
    parts += [f"{k} {env[k]}" for k in ("bqq", "torch", "numba", "transformers") if env.get(k)]
    return ", ".join(parts)


def provenance(command: str | list[str], env: dict | None = None, date: str | None = None) -> str:
    """The one line above a table: the command(s), the machine, the date where the file records one."""
    commands = [command] if isinstance(command, str) else list(command)
    text = "; ".join(f"`{c.strip('`')}`" for c in commands)
    where = machine(env)
    if where:
        text += f" on {where}"
    if date:
        text += f", {date}"
    return f"*{text}.*"


def dated_commands(commands: list[str]) -> tuple[list[str], str | None]:
    """Commands recorded as ``cmd` (YYYY-MM-DD)``: the commands and the latest date."""
    out, dates = [], []
    for c in commands:
        m = re.match(r"(.*?)`? \((\d{4}-\d{2}-\d{2})\)$", c)
        out.append(m.group(1) if m else c)
        if m:
            dates.append(m.group(2))
    return out, (max(dates) if dates else None)


def chosen(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "–"


# ---------------------------------------------------------------- matrix compression (benchmarks.matrix)

MATRIX = "benchmarks/results/matrix.json"
METHOD_NAMES = {
    "bcq": "BCQ",
    "uq": "UQ",
    "svd": "SVD",
    "svd-q4": "SVD + 4-bit UQ",
    "svd-q8": "SVD + 8-bit UQ",
    "vq": "VQ",
    "vq-q4": "VQ + 4-bit UQ",
    "vq-q8": "VQ + 8-bit UQ",
    "lvq": "E8 LVQ",
    "jpeg": "8-bit UQ + JPEG",
}


def _matrix_prov(d) -> str:
    return provenance(d["settings"]["command"], d["env"])


@block("matrix-headline", MATRIX, command="python -m benchmarks.matrix --threads 1")
def _(d):
    rows = [
        [
            r["dataset"],
            shape(r["shape"]),
            f(r["bqq_mse"], 4),
            f"{METHOD_NAMES.get(r['first_order'], r['first_order'])} {f(r['first_order_mse'], 4)}",
            f(r["ratio"], 2),
        ]
        for r in d["headline_2bit"]
    ]
    return (
        _matrix_prov(d)
        + "\n\n"
        + table(["matrix", "shape", "BQQ 2* MSE", "best first-order at 2 bits (MSE)", "BQQ / first-order"], rows)
    )


@block("matrix-2bit", MATRIX, command="python -m benchmarks.matrix --threads 1")
def _(d):
    rows = [
        [
            r["dataset"],
            shape(r["shape"]),
            f(r["bqq_mse"], 4),
            METHOD_NAMES.get(r["first_order"], r["first_order"]),
            f(r["first_order_mse"], 4),
            f(r["ratio"], 2),
            f"{METHOD_NAMES.get(r['best_other'], r['best_other'])} ({r['best_other_setting']})",
            f(r["best_other_mse"], 4),
        ]
        for r in d["headline_2bit"]
    ]
    headers = [
        "matrix",
        "shape",
        "BQQ 2* MSE",
        "best first-order",
        "its MSE",
        "BQQ / first-order",
        "best non-BQQ within 2 bits",
        "its MSE",
    ]
    return _matrix_prov(d) + "\n\n" + table(headers, rows)


@block("matrix-wins", MATRIX, command="python -m benchmarks.matrix --threads 1")
def _(d):
    return _matrix_prov(d) + "\n\n" + "\n".join(f"- {line}" for line in d["summary"])


@block("matrix-paper", MATRIX, command="python -m benchmarks.matrix --threads 1")
def _(d):
    rows = [[r["p"], f(r["mse"], 4), f(r["paper"], 4), f"{100 * r['rel_diff']:+.1f} %"] for r in d["random_row_check"]]
    return _matrix_prov(d) + "\n\n" + table(["p", "BQQ MSE (random 128×128)", "paper Table S.4", "difference"], rows)


# ---------------------------------------------------------------- the solver (benchmarks/solver.py)

SOLVER = "benchmarks/results/solver.json"
SOLVER_CMD = "python benchmarks/solver.py --json benchmarks/results/solver.json"


@block("solver-grouping", SOLVER, command=SOLVER_CMD)
def _(d):
    rows = [
        [
            "default" if r["sweep_budget"] is None else f"{r['sweep_budget']:.2g}",
            f"{r['group']}²",
            r["groups"],
            r["rank"],
            r["sweeps"],
            f(r["seconds"], 1),
            f(r["us_per_weight_per_stack"], 2),
            f(r["mse"], 4),
            f(r["bits_per_weight"], 4),
            f(r["gflops"], 0),
            f"{100 * r['gemm_fraction']:.0f} %",
        ]
        for r in d["grouping"]
    ]
    headers = [
        "sweep_budget",
        "group",
        "groups",
        "l",
        "sweeps",
        "seconds",
        "µs/weight/stack",
        "MSE",
        "bits/weight",
        "GFLOP/s",
        "of dense GEMM",
    ]
    intro = (
        f"One 1024×1024 standardized Gaussian at 2*; dense fp32 GEMM in the same run: {d['gemm_gflops']:.0f} GFLOP/s."
    )
    return provenance(SOLVER_CMD, d["env"]) + "\n\n" + intro + "\n\n" + table(headers, rows)


@block("solver-speed", SOLVER, command=SOLVER_CMD)
def _(d):
    rows = [[shape(r["shape"]), r["rank"], r["sweeps"], f(r["seconds"], 2), f(r["mse"], 4)] for r in d["speed"]]
    return (
        provenance(SOLVER_CMD, d["env"]) + "\n\n" + table(["shape", "l", "sweeps", "median s per stack", "MSE"], rows)
    )


@block("solver-quality", SOLVER, MATRIX, command=SOLVER_CMD)
def _(d, m):
    rows = [[r["matrix"], r["setting"], *(f(x, 4) for x in r["mse"]), f(r["seconds"], 1)] for r in d["quality"]]
    rows.append(["paper Table S.4", "official AMFD, 50k steps", *(f(r["paper"], 4) for r in m["random_row_check"]), ""])
    return (
        provenance(SOLVER_CMD, d["env"])
        + "\n\n"
        + table(["128×128 matrix", "setting", "p=1", "p=2", "p=3", "p=4", "seconds (p=1..4)"], rows)
    )


@block("solver-schedule", SOLVER, command=SOLVER_CMD)
def _(d):
    pairs: dict = {}
    for r in d["schedule"]:
        pairs.setdefault((tuple(r["shape"]), r["stacks"]), {})[r["schedule"]] = r
    rows = []
    for (shp, p), s in pairs.items():
        old, new = s["previous"], s["default"]
        rows.append(
            [
                shape(shp),
                p,
                old["sweeps"],
                f(old["mse"], 4),
                f(old["seconds"], 2),
                new["sweeps"],
                f(new["mse"], 4),
                f(new["seconds"], 2),
                f(new["mse"] / old["mse"], 4),
                f(new["seconds"] / old["seconds"], 2),
            ]
        )
    headers = [
        "shape",
        "p",
        "previous sweeps",
        "previous MSE",
        "previous s",
        "default sweeps",
        "default MSE",
        "default s",
        "MSE ratio",
        "time ratio",
    ]
    return provenance(SOLVER_CMD, d["env"]) + "\n\n" + table(headers, rows)


@block("solver-baseline", "benchmarks/results/solver_baseline.json", command="python benchmarks/solver.py --baseline")
def _(d):
    rows = [
        [
            shape(r["shape"]),
            f"`{r['baseline_ref'][:8]}`",
            f(r["baseline_s"], 2),
            f(r["baseline_mse"], 4),
            f(r["current_s"], 2),
            f(r["current_mse"], 4),
            ratio(r["speedup"]),
        ]
        for r in d["baseline"]
    ]
    return (
        provenance("python benchmarks/solver.py --baseline")
        + "\n\n"
        + table(
            ["shape", "baseline revision", "baseline s", "baseline MSE", "this tree s", "this tree MSE", "speed-up"],
            rows,
        )
    )


# ---------------------------------------------------------------- first-order batching, busy CPU


@block("first-order", "benchmarks/results/first_order.json", command="python -m benchmarks.first_order")
def _(d):
    rows = [
        [
            r["method"].upper(),
            r["bits"],
            r["matrices"],
            r["groups"],
            f(r["new_s"], 1),
            f(r["old_s"], 0) + (" (extrapolated)" if r["old_extrapolated"] else ""),
            ratio(r["speedup"], 1),
            f(r["rel_error_new"], 4),
            r["error"],
        ]
        for r in d["cases"]
    ]
    headers = [
        "method",
        "bits",
        "matrices",
        "groups",
        "batched s",
        "per-group loop s",
        "speed-up",
        "relative error",
        "error measured on",
    ]
    return provenance("python -m benchmarks.first_order", d["env"]) + "\n\n" + table(headers, rows)


@block(
    "busy-cpu",
    "benchmarks/results/busy_cpu.json",
    "benchmarks/results/busy_cpu_vit.json",
    command="python -m benchmarks.busy_cpu",
)
def _(solve, vit):
    out = []
    for d, cmd, what in (
        (solve, "python -m benchmarks.busy_cpu", "one BQQ solve, 768×192 in 192² groups"),
        (vit, "python -m benchmarks.busy_cpu --workload vit_tiny", "`bqq.quantize` of a 2-block vit_tiny at 2 bits"),
    ):
        rows = [
            [
                variant,
                f(s["quiet"]["wall"], 1),
                f(s["busy"]["wall"], 1),
                ratio(s["ratio"]),
                f"{s['load_quiet']:.2f} / {s['load_busy']:.2f}",
            ]
            for variant, s in d["summary"].items()
        ]
        out.append(
            provenance(cmd, d["env"], d["env"].get("date_utc"))
            + f" Workload: {what}.\n\n"
            + table(
                ["thread policy", "quiet s", "beside a 2-thread BQQ process s", "busy / quiet", "load average"], rows
            )
        )
    return "\n\n".join(out)


# ---------------------------------------------------------------- model PTQ (quantize.md)

PTQ_CNN = "benchmarks/results/ptq_cnn.json"


@block("ptq-cnn", PTQ_CNN, command="python -m benchmarks.ptq_cnn")
def _(d):
    cmds, date = dated_commands(d["commands"])
    rows = [
        [
            r["bits"],
            r["method"],
            f(r["agreement"], 3),
            f(r["agreement_confident"], 3),
            f(r["kl"], 3),
            f(r["bits_per_weight"], 3),
            f(r["model_bits_per_param"], 3),
            chosen(r["chosen"]),
        ]
        for r in d["rows"]
    ]
    headers = [
        "bits",
        "method",
        "top-1 agreement",
        f"on the {d['rows'][0]['confident_crops']} sure crops",
        "KL(FP‖Q)",
        "bits/weight",
        "bits/param (model)",
        "layers chosen",
    ]
    return (
        provenance(cmds, d["env"], date) + f" {d['images']} crops of {d['photos']} photos.\n\n" + table(headers, rows)
    )


@block(
    "ptq-cnn-ablation", "benchmarks/results/ptq_cnn_ablation.json", command="python -m benchmarks.ptq_cnn --ablation"
)
def _(d):
    cmds, date = dated_commands(d["commands"])
    rows = [
        [
            r["bits"],
            r["method"],
            "folded" if r["fold_bn"] else "kept",
            r["group"],
            f(r["agreement"], 3),
            f(r["kl"], 3),
            f(r["bits_per_weight"], 3),
        ]
        for r in d["rows"]
    ]
    return (
        provenance(cmds, d["env"], date)
        + "\n\n"
        + table(["bits", "method", "BatchNorm", "groups", "top-1 agreement", "KL(FP‖Q)", "bits/weight"], rows)
    )


def _fashion(d, command: str) -> str:
    rows = []
    for r in d["rows"]:
        star = "*" if r["method"] == "bqq" else ""
        name = {"uq": "UQ", "bcq": "BCQ", "bqq": "BQQ", "auto": "auto"}[r["method"]]
        seeds = r["data_free_seeds"]
        mean = sum(seeds) / len(seeds)
        sd = (sum((s - mean) ** 2 for s in seeds) / len(seeds)) ** 0.5  # population sd, as the script prints
        rows.append(
            [
                f"{r['bits']}{star}",
                name,
                f(r["data_free"], 2),
                f"{mean:.2f} ± {sd:.2f} ({min(seeds):.2f}–{max(seeds):.2f})",
                f(r["calibrated"], 2),
                f(r["bits_per_weight"], 3),
            ]
        )
    rows.append(["32", "FP", f(d["fp_top1"], 2), "", "", "32"])
    headers = [
        "bits",
        "method",
        "data-free top-1 (%)",
        f"data-free over seeds {d['seeds'] if 'seeds' in d else ''}",
        f"c- (calibrated, {d.get('calib_epochs', 15)} epochs) top-1 (%)",
        "bits/weight",
    ]
    return provenance(command, d["env"]) + "\n\n" + table(headers, rows)


@block("fashion-patch7", "benchmarks/results/ptq_fashion_mnist.json", command="python -m benchmarks.ptq_fashion_mnist")
def _(d):
    return _fashion(
        d,
        "python -m benchmarks.ptq_fashion_mnist --model patch7 --bits 2 3 4 --seeds 0 1 2 "
        "--sweeps 1000 --calib-size 512 --workers 2",
    )


@block(
    "fashion-patch4",
    "benchmarks/results/ptq_fashion_mnist_patch4.json",
    command="python -m benchmarks.ptq_fashion_mnist --model patch4",
)
def _(d):
    return _fashion(d, "python -m benchmarks.ptq_fashion_mnist --model patch4 --bits 2 3")


@block(
    "ptq-timing",
    "benchmarks/results/ptq_timing_deit_small_patch16_224_bqq2.json",
    command="python -m benchmarks.ptq_timing --workers 2",
)
def _(d):
    groups = ", ".join(f"{n} of {shape(s)}" for s, n in d["group_shapes"].items())
    rows = [
        [
            d["model"],
            f"{d['bits']}* {d['method'].upper()}",
            f"{d['groups']} ({groups})",
            d["workers"],
            f"{d['wall_s'] / 60:.1f} min",
            f(d["seconds_per_group"], 2),
            f"{d['peak_rss_mb_bound']:.0f} MB",
            f(d["bits_per_weight"], 4),
        ]
    ]
    env = {"cpu_count": d["cpu_count"], "machine": d["device"].upper(), "bqq": d["bqq"], "torch": d["torch"]}
    headers = [
        "model (random init)",
        "method",
        "groups",
        "workers",
        "wall time",
        "s/group",
        "peak RSS (bound)",
        "bits/weight",
    ]
    return provenance("python -m benchmarks.ptq_timing --workers 2", env) + "\n\n" + table(headers, rows)


# ---------------------------------------------------------------- calibration (calibration.md)

INPUT_MODES = {"float": "FP inputs", "quantized": "quantized inputs", "corrected": "corrected (default)", "": "–"}


@block("minilm-ptq", "benchmarks/results/ptq_transformer.json", command="python -m benchmarks.ptq_transformer")
def _(d):
    rows = []
    for r in d["rows"]:
        method, *rest = r["row"].split("+")
        mode = rest[0] if rest else ""
        star = "*" if method == "bqq" else ""
        label = {"uq": "UQ", "bcq": "BCQ", "bqq": "BQQ", "auto": "auto", "gptq": "GPTQ"}[method]
        if "tune" in rest:
            label += " + c-BQQ"
        rows.append(
            [
                f"{r['bits']}{star}",
                label,
                INPUT_MODES[mode],
                f(r["cosine"], 4),
                f(r["spearman"], 4),
                f(r["bits_per_weight"], 3),
                chosen(r["chosen"]),
                f(r["seconds"], 0),
                r["solved"],
            ]
        )
    headers = [
        "bits",
        "method",
        "calibration inputs",
        "mean cosine",
        "Spearman",
        "bits/weight",
        "layers chosen",
        "seconds",
        "jobs solved (rest cached)",
    ]
    note = (
        f" {d['calib']} calibration and {d['eval']} evaluation sentences, BQQ {d['sweeps']} sweeps per stack;"
        " rows merge several runs, so a row's seconds are its cost only when it solved all its jobs."
    )
    return provenance(d["commands"], d["env"]) + note + "\n\n" + table(headers, rows)


@block(
    "fashion-aware",
    "benchmarks/results/ptq_fashion_mnist_aware.json",
    command="python -m benchmarks.ptq_fashion_mnist --aware",
)
def _(d):
    rows = []
    for r in d["rows"]:
        star = "*" if r["method"] == "bqq" else ""
        calib = "none" if not r["calibrated"] else "H" + (f" + {r['tune_epochs']} epochs" if r["tune_epochs"] else "")
        rows.append(
            [
                f"{r['bits']}{star}",
                r["label"],
                calib,
                INPUT_MODES[r["inputs"]],
                f(r["top1"], 2),
                f"{r['top1'] - d['fp_top1']:+.2f}",
                f(r["bits_per_weight"], 3),
                f(r["quantize_s"], 0),
            ]
        )
    rows.append(["32", "FP", "–", "–", f(d["fp_top1"], 2), "–", "32", "–"])
    cmd = "python -m benchmarks.ptq_fashion_mnist --aware --bits 1 2 3 --sweeps 1000 --calib-size 512"
    return (
        provenance(cmd, d["env"])
        + "\n\n"
        + table(
            ["bits", "method", "calibration", "layer inputs", "top-1 (%)", "vs FP", "bits/weight", "quantize s"], rows
        )
    )


# ---------------------------------------------------------------- LLMs (llm.md)

GROUPING = "benchmarks/results/llm_grouping.json"
BUDGET = {None: "default", 4e4: "4e4", 8e4: "8e4", 8e8: "8e8", 1.7e9: "1.7e9"}


def _group(g: str) -> str:
    return "128 × input" if g == "128xin" else f"{g}²"


@block("llm-grouping-7b", GROUPING, command="python -m benchmarks.llm_grouping")
def _(d):
    rows = [
        [
            _group(r["group"]),
            BUDGET.get(r["budget"], r["budget"]),
            "/".join(map(str, r["sweeps"])),
            f(r["rel_error"], 4),
            f(r["bits_fp32"], 4),
            f(r["us_per_weight"], 2),
            f(r["llama2_7b_hours"], 1),
        ]
        for r in d["rows"]
        if r["source"] == "gauss-4096"
    ]
    intro = f"Source: {d['sources']['gauss-4096']['description']}, 2* BQQ."
    return (
        provenance("python -m benchmarks.llm_grouping", d["environment"])
        + " "
        + intro
        + "\n\n"
        + table(["group", "budget", "sweeps", "weight error", "bits/weight", "µs/weight", "Llama-2-7B hours"], rows)
    )


@block("llm-grouping-real", GROUPING, command="python -m benchmarks.llm_grouping")
def _(d):
    groups = ["128", "256", "512", "128xin"]
    cells = {(r["source"], r["group"]): r for r in d["rows"] if r["objective"] == "plain" and r["budget"] == 4e4}
    rows = []
    for src in ("tiny-llama", "minilm-ffn", "effnet-head"):
        rows.append(
            [src]
            + [
                f"{f(c['rel_error'], 4)} ({f(c['bits_fp32'], 3)})" if (c := cells.get((src, g))) else "–"
                for g in groups
            ]
        )
    return (
        provenance("python -m benchmarks.llm_grouping", d["environment"])
        + (" Budget 4e4; weight error, bits/weight in brackets.\n\n")
        + table(["source"] + [_group(g) for g in groups], rows)
    )


@block("llm-grouping-aware", GROUPING, command="python -m benchmarks.llm_grouping")
def _(d):
    rows = [
        [
            r["objective"],
            BUDGET.get(r["budget"], r["budget"]),
            "/".join(map(str, r["sweeps"])),
            f(r["output_error"], 4),
            f(r["us_per_weight"], 1),
        ]
        for r in d["rows"]
        if r["source"] == "tiny-llama" and r["group"] == "256"
    ]
    return (
        provenance("python -m benchmarks.llm_grouping", d["environment"])
        + (" Tiny Llama block 1, 256² groups, H from 32 calibration windows.\n\n")
        + table(["objective", "budget", "sweeps", "output error under H", "µs/weight"], rows)
    )


LLM_SCALE = tuple(
    f"benchmarks/results/llm_scale_{s}.json"
    for s in (
        "tinyllama_bqq-data-free",
        "tinyllama_bqq-calibrated",
        "tinyllama_gptq-calibrated",
        "llama2-7b_bqq-data-free",
        "llama2-7b_gptq-calibrated",
    )
)


@block("llm-scale", *LLM_SCALE, command="python -m benchmarks.llm_scale")
def _(*runs):
    rows = []
    for r in runs:
        flags = f"--shape {r['shape']} --method {r['method']}" + ("" if r["calibrated"] else " --data-free")
        if r["blocks_in_model"] != {"tinyllama": 22, "llama2-7b": 32}[r["shape"]]:
            flags += f" --model-blocks {r['blocks_in_model']}"
        flags += f" --blocks {r['blocks_solved']}"
        method = f"{r['bits']}* BQQ" if r["method"] == "bqq" else f"GPTQ {r['bits']}-bit g128"
        rows.append(
            [
                r["shape"],
                method + (" calibrated" if r["calibrated"] else " data-free"),
                f"`{flags}`",
                f(r["median_block_s"], 1),
                f"{r['projected_model_s'] / 60:.0f} min",
                f(r["memory_ratio_full_depth"], 2),
            ]
        )
    return (
        provenance("python -m benchmarks.llm_scale FLAGS")
        + (
            " Random-init bf16 Llama of each shape; the first blocks solved, the whole model projected from the"
            " median block.\n\n"
        )
        + table(
            [
                "shape",
                "method",
                "flags",
                "s per block",
                "projected, whole model",
                "pass memory / (model + activations), full depth",
            ],
            rows,
        )
    )


@block("ptq-llm", "benchmarks/results/ptq_llm.json", command="python -m benchmarks.ptq_llm")
def _(d):
    rows = {(r["row"], r["bits"]): r for r in d["rows"]}
    out = []
    for b in sorted({r["bits"] for r in d["rows"] if r["bits"]}):
        cells = []
        for name in ("rtn", "gptq", "bqq", "bqq-data", "auto"):
            r = rows.get((name, b))
            cells.append(f"{f(r['perplexity'], 3)} ({f(r['bits_per_weight'], 3)})" if r else "–")
        out.append([b, *cells])
    cmds, date = dated_commands(d["commands"])
    fp, noise = rows[("fp", None)], rows[("noise", None)]
    s = d["settings"]
    intro = (
        f" `{s['model']}` ({s['parameters']:,} parameters), held-out perplexity at seqlen {s['seqlen']}, "
        f"{s['nsamples']} calibration windows. FP {f(fp['perplexity'], 3)}; FP with Gaussian noise of "
        f"0.5× each weight's standard deviation on every block linear {f(noise['perplexity'], 3)}. "
        "Bits/weight in brackets, every scalar counted."
    )
    return (
        provenance(cmds, d["env"], date)
        + intro
        + "\n\n"
        + table(["bits", "RTN g128", "GPTQ g128", "BQQ data-free", "BQQ data-aware", "auto (calibrated)"], out)
    )


# ---------------------------------------------------------------- kernels (kernels.md)

INFERENCE = "benchmarks/results/inference.json"


def _inference_prov(d, part: str) -> str:
    """inference.json records per part the command that wrote it, with its date (``made_by``)."""
    made_by = d.get("made_by", {}).get(part) or f"`{d['command']}` ({d['date']})"
    return f"*{made_by} on {machine(d['env'])}.*"


@block("inference-layers", INFERENCE, command="python -m benchmarks.inference --parts layers")
def _(d):
    rows = [
        [
            shape(r["shape"]),
            r["tokens"],
            f"{1e3 * r['dense_s']:.3g} ms",
            ratio(r["bqq2_ratio"], 3),
            ratio(r["uq2_ratio"], 3),
            ratio(r["uq3_ratio"], 3),
            ratio(r["int4_ratio"], 3),
            ratio(r["bf16_ratio"], 2),
        ]
        for r in d["layers"]
    ]
    headers = ["weight", "tokens", "dense fp32", "2* BQQ", "2-bit UQ", "3-bit UQ", "torch int4 g128 (bf16)", "bf16"]
    return (
        _inference_prov(d, "layers")
        + " Times relative to dense fp32 `F.linear` in the same run.\n\n"
        + table(headers, rows)
    )


@block("inference-generate", INFERENCE, command="python -m benchmarks.inference --parts generate")
def _(d):
    rows = [
        [
            r["shape"],
            r["row"],
            f(r["tokens_per_s"], 2),
            ratio(r["speedup_fp32"]),
            ratio(r["speedup_int4"]),
            ratio(r["prefill_ratio"]),
            f"{r['peak_rss_mb']:.0f} MB",
        ]
        for r in d["generate"]
    ]
    headers = [
        "model shape (random init)",
        "weights",
        "decode tokens/s",
        "vs fp32",
        "vs torch int4",
        "prefill time vs fp32",
        "peak RSS",
    ]
    return _inference_prov(d, "generate") + "\n\n" + table(headers, rows)


@block("inference-deit", INFERENCE, command="python -m benchmarks.inference --parts deit")
def _(d):
    rows = [
        [
            r["batch"],
            f"{1e3 * r['fp32_s']:.1f}",
            f"{1e3 * r['bqq_s']:.1f}",
            f"{1e3 * r['uq_s']:.1f}",
            f"{1e3 * r['bcq_s']:.1f}",
            f"{1e3 * r['auto_s']:.1f} ({chosen(r['auto_methods'])})",
            f"{1e3 * r['reference_s']:.1f}",
        ]
        for r in d["deit"]
    ]
    return (
        _inference_prov(d, "deit")
        + " DeiT-S at 2 bits, ms per forward.\n\n"
        + table(["batch", "fp32", "2* BQQ", "UQ", "BCQ", "auto", "BQQ, dense-rebuild reference path"], rows)
    )


@block("inference-accuracy", INFERENCE, command="python -m benchmarks.inference --parts accuracy")
def _(d):
    rows = [
        [
            f"tiny Llama, {r['row']}",
            f"{r['layer_error_median']:.1e} / {r['layer_error_max']:.1e}",
            f"{r['ppl_numba-exact']:.4f} → {r['ppl_numba-table']:.4f}",
        ]
        for r in d["accuracy"]["llm"]
    ]
    rows += [
        [f"Fashion-MNIST ViT, {r['row']}", "–", f"top-1 {r['top1_numba-exact']:.2f} → {r['top1_numba-table']:.2f}"]
        for r in d["accuracy"]["vit"]
    ]
    return (
        _inference_prov(d, "accuracy")
        + "\n\n"
        + table(["model", "per-layer relative error, median / max", "exact → table path"], rows)
    )


@block("kernels-bqq", "benchmarks/results/kernels.json", command="python -m benchmarks.kernels")
def _(d):
    tokens = sorted({r["tokens"] for r in d["layers"]})
    cells = {(r["shape"], r["tokens"]): r["ratio"] for r in d["layers"]}
    shapes = list(dict.fromkeys(r["shape"] for r in d["layers"]))
    rows = [[shape(s)] + [f(cells.get((s, t)), 2) for t in tokens] for s in shapes]
    return (
        provenance("python -m benchmarks.kernels", d["env"])
        + (f" 2* BQQ ({d['stacks']} stacks, {d['group']}² groups) time / dense fp32 time.\n\n")
        + table(["weight"] + [f"{t} token{'s' if t != 1 else ''}" for t in tokens], rows)
    )


# ---------------------------------------------------------------- SLT and GNN examples


@block("slt-fashion", "examples/results/slt_fashion_mnist.json", command="python examples/slt_fashion_mnist.py")
def _(d):
    rows = [
        [
            r["label"],
            f(r["accuracy"], 2),
            f(r["stored_mb"], 4),
            f(r["bits_per_weight"], 3),
            f"{r['compression']:.1f}× smaller",
            f(r["train_seconds"], 0),
            "yes" if r["reload_exact"] else "no",
        ]
        for r in d["results"]
    ]
    s = d["settings"]
    intro = (
        f" {s['epochs']} epochs on {s['train_size']:,} training images, batch {s['batch']}, width "
        f"{s['width']}; test on the 10k test images."
    )
    return (
        provenance("python examples/slt_fashion_mnist.py", d["env"])
        + intro
        + "\n\n"
        + table(
            ["model", "test top-1 (%)", "stored MB", "mask bits/weight", "vs dense fp32", "train s", "reload exact"],
            rows,
        )
    )


@block("gnn-slt", "examples/results/gnn_slt.json", command="python examples/gnn_slt.py")
def _(d):
    rows = []
    for r in d["summary"]:
        acc = f(r["test_mean"], 1) + (f" ± {f(r['test_std'], 1)}" if len(r["seeds"]) > 1 else "")
        red = f"−{100 * r['reduction']:.1f} %" if r["reduction"] else "–"
        exact = {True: "yes", False: "no", None: "–"}[r["reload_exact"]]
        rows.append(
            [
                r["graph"],
                r["label"],
                r["hidden"],
                acc,
                f(r["stored_mb"], 4),
                f(r["bits_per_weight"], 3),
                red,
                f(r["train_seconds"], 1),
                exact,
            ]
        )
    headers = [
        "graph",
        "model",
        "H",
        "test acc. (%)",
        "stored MB",
        "bits/weight",
        "memory vs dense fp32",
        "train s",
        "reload exact",
    ]
    return (
        provenance(d["command"], d["env"])
        + (f" {d['settings']['epochs']} epochs; wall time {d['wall_seconds']:.0f} s.\n\n")
        + table(headers, rows)
    )


# ---------------------------------------------------------------- driver


def load_sources(blk: Block, results_root: Path) -> list:
    data = []
    for rel in blk.sources:
        path = results_root / rel
        if not path.is_file():
            raise ReportError(
                f"block {blk.name!r} reads {rel}, which does not exist under {results_root} (`{blk.command}` writes it)"
            )
        try:
            data.append(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise ReportError(f"block {blk.name!r}: {rel} is not valid JSON ({e})") from e
    return data


def render_block(name: str, results_root: Path = ROOT) -> str:
    if name not in BLOCKS:
        raise ReportError(f"unknown block {name!r} (known: {', '.join(sorted(BLOCKS))})")
    blk = BLOCKS[name]
    try:
        # a blank line ends the table before the closing marker
        return blk.render(*load_sources(blk, results_root)).rstrip("\n") + "\n\n"
    except (KeyError, TypeError, IndexError) as e:
        raise ReportError(f"block {name!r}: its result files lack an expected field ({e!r})") from e


def render_text(text: str, results_root: Path = ROOT) -> str:
    """``text`` with every generated block rendered again."""
    return MARKER.sub(
        lambda m: f"<!-- report:{m.group(1)} -->\n{render_block(m.group(1), results_root)}<!-- /report -->", text
    )


def doc_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for pattern in DOC_FILES:
        files += sorted(root.glob(pattern))
    return files


def run(root: Path = ROOT, results_root: Path | None = None, check: bool = False) -> list[str]:
    """Render every block of ``root``'s docs; rewrite them, or (``check``) return the differences."""
    results_root = results_root or root
    problems: list[str] = []
    for path in doc_files(root):
        old = path.read_text()
        new = render_text(old, results_root)
        if new == old:
            continue
        rel = path.relative_to(root)
        if check:
            diff = difflib.unified_diff(
                old.splitlines(), new.splitlines(), f"{rel} (committed)", f"{rel} (rendered)", lineterm="", n=0
            )
            problems.append("\n".join(diff))
        else:
            path.write_text(new)
            print(f"rewrote {rel}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 listing every stale block")
    ap.add_argument("--list", action="store_true", help="list the blocks, the files they read and their commands")
    args = ap.parse_args(argv)
    if args.list:
        for b in BLOCKS.values():
            print(f"{b.name}: {', '.join(b.sources)}  <- `{b.command}`")
        return 0
    try:
        problems = run(check=args.check)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if problems:
        print("generated blocks differ from the result files (run `python -m benchmarks.report`):\n", file=sys.stderr)
        print("\n\n".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
