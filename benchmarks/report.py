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

Columns = list[tuple[str, Callable[[dict], object]]]  # (header, cell of one row)


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def rows_table(rows: list[dict], columns: Columns) -> str:
    """A table with one line per row and one column per ``(header, cell)`` entry."""
    return table([h for h, _ in columns], [[cell(r) for _, cell in columns] for r in rows])


def f(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def ratio(x, digits: int = 2) -> str:
    return f"{x:.{digits}f}×"


def num(key: str, digits: int = 3) -> Callable[[dict], str]:
    return lambda r: f(r[key], digits)


def times(key: str, digits: int = 2) -> Callable[[dict], str]:
    return lambda r: ratio(r[key], digits)


def ms(key: str, digits: int = 1) -> Callable[[dict], str]:
    return lambda r: f"{1e3 * r[key]:.{digits}f}"


def shape(s) -> str:
    return "×".join(str(v) for v in s) if isinstance(s, list | tuple) else str(s).replace("x", "×")


def chosen(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "–"


def machine(env: dict | None) -> str:
    env = env or {}
    parts = []
    cores, cpu = env.get("cpu_count"), env.get("cpu") or env.get("machine")
    if cpu:
        parts.append(f"{cores}-core {cpu}" if cores else str(cpu))
    threads = env.get("threads") or env.get("numba_threads") or env.get("torch_threads")
    if threads:
        parts.append(f"{threads} thread{'s' if threads != 1 else ''}")
    parts += [f"{k} {env[k]}" for k in ("bqq", "torch", "numba", "transformers") if env.get(k)]
    return ", ".join(parts)


def provenance(command: str | list[str], env: dict | None = None, date: str | None = None) -> str:
    """The one line above a table: the command(s), the machine, the date where the file records one."""
    commands = [command] if isinstance(command, str) else list(command)
    text = "; ".join(f"`{c.strip('`')}`" for c in commands)
    if where := machine(env):
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
        dates += [m.group(2)] if m else []
    return out, (max(dates) if dates else None)


def section(prov: str, body: str, note: str = "") -> str:
    """Provenance line (plus a note on the same line), a blank line, the body."""
    return f"{prov}{' ' + note if note else ''}\n\n{body}"


# ---------------------------------------------------------------- matrix compression (benchmarks.matrix)

MATRIX = "benchmarks/results/matrix.json"
MATRIX_CMD = "python -m benchmarks.matrix --threads 1"
NAMES = {"bcq": "BCQ", "uq": "UQ", "svd": "SVD", "svd-q4": "SVD + 4-bit UQ", "svd-q8": "SVD + 8-bit UQ", "vq": "VQ",
         "vq-q4": "VQ + 4-bit UQ", "vq-q8": "VQ + 8-bit UQ", "lvq": "E8 LVQ", "jpeg": "8-bit UQ + JPEG"}


def name(key: str) -> Callable[[dict], str]:
    return lambda r: NAMES.get(r[key], r[key])


def _matrix(d, body: str) -> str:
    return section(provenance(d["settings"]["command"], d["env"]), body)


@block("matrix-headline", MATRIX, command=MATRIX_CMD)
def _(d):
    return _matrix(d, rows_table(d["headline_2bit"], [
        ("matrix", lambda r: r["dataset"]),
        ("shape", lambda r: shape(r["shape"])),
        ("BQQ 2* MSE", num("bqq_mse", 4)),
        ("best first-order at 2 bits (MSE)", lambda r: f"{name('first_order')(r)} {f(r['first_order_mse'], 4)}"),
        ("BQQ / first-order", num("ratio", 2)),
    ]))


@block("matrix-2bit", MATRIX, command=MATRIX_CMD)
def _(d):
    return _matrix(d, rows_table(d["headline_2bit"], [
        ("matrix", lambda r: r["dataset"]),
        ("shape", lambda r: shape(r["shape"])),
        ("BQQ 2* MSE", num("bqq_mse", 4)),
        ("best first-order", name("first_order")),
        ("its MSE", num("first_order_mse", 4)),
        ("BQQ / first-order", num("ratio", 2)),
        ("best non-BQQ within 2 bits", lambda r: f"{name('best_other')(r)} ({r['best_other_setting']})"),
        ("its MSE", num("best_other_mse", 4)),
    ]))


@block("matrix-wins", MATRIX, command=MATRIX_CMD)
def _(d):
    return _matrix(d, "\n".join(f"- {line}" for line in d["summary"]))


@block("matrix-paper", MATRIX, command=MATRIX_CMD)
def _(d):
    return _matrix(d, rows_table(d["random_row_check"], [
        ("p", lambda r: r["p"]),
        ("BQQ MSE (random 128×128)", num("mse", 4)),
        ("paper Table S.4", num("paper", 4)),
        ("difference", lambda r: f"{100 * r['rel_diff']:+.1f} %"),
    ]))


# ---------------------------------------------------------------- the solver (benchmarks/solver.py)

SOLVER = "benchmarks/results/solver.json"
SOLVER_CMD = "python benchmarks/solver.py --json benchmarks/results/solver.json"


@block("solver-grouping", SOLVER, command=SOLVER_CMD)
def _(d):
    note = ("One 1024×1024 standardized Gaussian at 2*; dense fp32 GEMM in the same run: "
            f"{d['gemm_gflops']:.0f} GFLOP/s.")
    return provenance(SOLVER_CMD, d["env"]) + "\n\n" + note + "\n\n" + rows_table(d["grouping"], [
        ("sweep_budget", lambda r: "default" if r["sweep_budget"] is None else f"{r['sweep_budget']:.2g}"),
        ("group", lambda r: f"{r['group']}²"),
        ("groups", lambda r: r["groups"]),
        ("l", lambda r: r["rank"]),
        ("sweeps", lambda r: r["sweeps"]),
        ("seconds", num("seconds", 1)),
        ("µs/weight/stack", num("us_per_weight_per_stack", 2)),
        ("MSE", num("mse", 4)),
        ("bits/weight", num("bits_per_weight", 4)),
        ("GFLOP/s", num("gflops", 0)),
        ("of dense GEMM", lambda r: f"{100 * r['gemm_fraction']:.0f} %"),
    ])


@block("solver-speed", SOLVER, command=SOLVER_CMD)
def _(d):
    return section(provenance(SOLVER_CMD, d["env"]), rows_table(d["speed"], [
        ("shape", lambda r: shape(r["shape"])),
        ("l", lambda r: r["rank"]),
        ("sweeps", lambda r: r["sweeps"]),
        ("median s per stack", num("seconds", 2)),
        ("MSE", num("mse", 4)),
    ]))


@block("solver-quality", SOLVER, MATRIX, command=SOLVER_CMD)
def _(d, m):
    paper = {"matrix": "paper Table S.4", "setting": "official AMFD, 50k steps",
             "mse": [r["paper"] for r in m["random_row_check"]], "seconds": None}
    return section(provenance(SOLVER_CMD, d["env"]), rows_table([*d["quality"], paper], [
        ("128×128 matrix", lambda r: r["matrix"]),
        ("setting", lambda r: r["setting"]),
        *((f"p={p + 1}", lambda r, p=p: f(r["mse"][p], 4)) for p in range(4)),
        ("seconds (p=1..4)", lambda r: "" if r["seconds"] is None else f(r["seconds"], 1)),
    ]))


@block("solver-schedule", SOLVER, command=SOLVER_CMD)
def _(d):
    pairs: dict = {}
    for r in d["schedule"]:
        pairs.setdefault((tuple(r["shape"]), r["stacks"]), {})[r["schedule"]] = r
    rows = [{"shape": shp, "p": p, "old": s["previous"], "new": s["default"]} for (shp, p), s in pairs.items()]
    return section(provenance(SOLVER_CMD, d["env"]), rows_table(rows, [
        ("shape", lambda r: shape(r["shape"])),
        ("p", lambda r: r["p"]),
        ("previous sweeps", lambda r: r["old"]["sweeps"]),
        ("previous MSE", lambda r: f(r["old"]["mse"], 4)),
        ("previous s", lambda r: f(r["old"]["seconds"], 2)),
        ("default sweeps", lambda r: r["new"]["sweeps"]),
        ("default MSE", lambda r: f(r["new"]["mse"], 4)),
        ("default s", lambda r: f(r["new"]["seconds"], 2)),
        ("MSE ratio", lambda r: f(r["new"]["mse"] / r["old"]["mse"], 4)),
        ("time ratio", lambda r: f(r["new"]["seconds"] / r["old"]["seconds"], 2)),
    ]))


@block("solver-baseline", "benchmarks/results/solver_baseline.json", command="python benchmarks/solver.py --baseline")
def _(d):
    return section(provenance("python benchmarks/solver.py --baseline"), rows_table(d["baseline"], [
        ("shape", lambda r: shape(r["shape"])),
        ("baseline revision", lambda r: f"`{r['baseline_ref'][:8]}`"),
        ("baseline s", num("baseline_s", 2)),
        ("baseline MSE", num("baseline_mse", 4)),
        ("this tree s", num("current_s", 2)),
        ("this tree MSE", num("current_mse", 4)),
        ("speed-up", times("speedup")),
    ]))


# ---------------------------------------------------------------- first-order batching, busy CPU


@block("first-order", "benchmarks/results/first_order.json", command="python -m benchmarks.first_order")
def _(d):
    return section(provenance("python -m benchmarks.first_order", d["env"]), rows_table(d["cases"], [
        ("method", lambda r: r["method"].upper()),
        ("bits", lambda r: r["bits"]),
        ("matrices", lambda r: r["matrices"]),
        ("groups", lambda r: r["groups"]),
        ("batched s", num("new_s", 1)),
        ("per-group loop s", lambda r: f(r["old_s"], 0) + (" (extrapolated)" if r["old_extrapolated"] else "")),
        ("speed-up", times("speedup", 1)),
        ("relative error", num("rel_error_new", 4)),
        ("error measured on", lambda r: r["error"]),
    ]))


BUSY_COLUMNS: Columns = [
    ("thread policy", lambda r: r["policy"]),
    ("quiet s", lambda r: f(r["quiet"]["wall"], 1)),
    ("beside a 2-thread BQQ process s", lambda r: f(r["busy"]["wall"], 1)),
    ("busy / quiet", times("ratio")),
    ("load average", lambda r: f"{r['load_quiet']:.2f} / {r['load_busy']:.2f}"),
]


@block("busy-cpu", "benchmarks/results/busy_cpu.json", "benchmarks/results/busy_cpu_vit.json",
       command="python -m benchmarks.busy_cpu")
def _(solve, vit):
    runs = [(solve, "python -m benchmarks.busy_cpu", "one BQQ solve, 768×192 in 192² groups"),
            (vit, "python -m benchmarks.busy_cpu --workload vit_tiny",
             "`bqq.quantize` of a 2-block vit_tiny at 2 bits")]
    return "\n\n".join(
        section(provenance(cmd, d["env"], d["env"].get("date_utc")),
                rows_table([{"policy": k, **v} for k, v in d["summary"].items()], BUSY_COLUMNS), f"Workload: {what}.")
        for d, cmd, what in runs)


# ---------------------------------------------------------------- model PTQ (docs/quantize.md)


@block("ptq-cnn", "benchmarks/results/ptq_cnn.json", command="python -m benchmarks.ptq_cnn")
def _(d):
    cmds, date = dated_commands(d["commands"])
    return section(provenance(cmds, d["env"], date), rows_table(d["rows"], [
        ("bits", lambda r: r["bits"]),
        ("method", lambda r: r["method"]),
        ("top-1 agreement", num("agreement")),
        (f"on the {d['rows'][0]['confident_crops']} sure crops", num("agreement_confident")),
        ("KL(FP‖Q)", num("kl")),
        ("bits/weight", num("bits_per_weight")),
        ("bits/param (model)", num("model_bits_per_param")),
        ("layers chosen", lambda r: chosen(r["chosen"])),
    ]), f"{d['images']} crops of {d['photos']} photos.")


@block("ptq-cnn-ablation", "benchmarks/results/ptq_cnn_ablation.json",
       command="python -m benchmarks.ptq_cnn --ablation")
def _(d):
    cmds, date = dated_commands(d["commands"])
    return section(provenance(cmds, d["env"], date), rows_table(d["rows"], [
        ("bits", lambda r: r["bits"]),
        ("method", lambda r: r["method"]),
        ("BatchNorm", lambda r: "folded" if r["fold_bn"] else "kept"),
        ("groups", lambda r: r["group"]),
        ("top-1 agreement", num("agreement")),
        ("KL(FP‖Q)", num("kl")),
        ("bits/weight", num("bits_per_weight")),
    ]))


LABELS = {"uq": "UQ", "bcq": "BCQ", "bqq": "BQQ", "auto": "auto", "gptq": "GPTQ"}


def _bits(r) -> str:
    return f"{r['bits']}{'*' if r['method'] == 'bqq' else ''}"  # p* for BQQ's p stacks


def _seeds(values: list[float]) -> str:
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5  # population sd, as the script prints
    return f"{mean:.2f} ± {sd:.2f} ({min(values):.2f}–{max(values):.2f})"


def _fashion(d, command: str) -> str:
    fp = {"bits": 32, "method": "FP", "data_free": d["fp_top1"], "data_free_seeds": None, "calibrated": None,
          "bits_per_weight": None}
    return section(provenance(command, d["env"]), rows_table([*d["rows"], fp], [
        ("bits", _bits),
        ("method", lambda r: LABELS.get(r["method"], r["method"])),
        ("data-free top-1 (%)", num("data_free", 2)),
        (f"data-free over seeds {d.get('seeds', '')}",
         lambda r: _seeds(r["data_free_seeds"]) if r["data_free_seeds"] else ""),
        (f"c- (calibrated, {d.get('calib_epochs', 15)} epochs) top-1 (%)",
         lambda r: "" if r["calibrated"] is None else f(r["calibrated"], 2)),
        ("bits/weight", lambda r: "32" if r["bits_per_weight"] is None else f(r["bits_per_weight"])),
    ]))


@block("fashion-patch7", "benchmarks/results/ptq_fashion_mnist.json", command="python -m benchmarks.ptq_fashion_mnist")
def _(d):
    return _fashion(d, "python -m benchmarks.ptq_fashion_mnist --model patch7 --bits 2 3 4 --seeds 0 1 2 --sweeps 1000 "
                       "--calib-size 512 --workers 2")


@block("fashion-patch4", "benchmarks/results/ptq_fashion_mnist_patch4.json",
       command="python -m benchmarks.ptq_fashion_mnist --model patch4")
def _(d):
    return _fashion(d, "python -m benchmarks.ptq_fashion_mnist --model patch4 --bits 2 3")


@block("ptq-timing", "benchmarks/results/ptq_timing_deit_small_patch16_224_bqq2.json",
       command="python -m benchmarks.ptq_timing --workers 2")
def _(d):
    env = {"cpu_count": d["cpu_count"], "machine": d["device"].upper(), "bqq": d["bqq"], "torch": d["torch"]}
    groups = ", ".join(f"{n} of {shape(s)}" for s, n in d["group_shapes"].items())
    return section(provenance("python -m benchmarks.ptq_timing --workers 2", env), rows_table([d], [
        ("model (random init)", lambda r: r["model"]),
        ("method", lambda r: f"{r['bits']}* {r['method'].upper()}"),
        ("groups", lambda r: f"{r['groups']} ({groups})"),
        ("workers", lambda r: r["workers"]),
        ("wall time", lambda r: f"{r['wall_s'] / 60:.1f} min"),
        ("s/group", num("seconds_per_group", 2)),
        ("peak RSS (bound)", lambda r: f"{r['peak_rss_mb_bound']:.0f} MB"),
        ("bits/weight", num("bits_per_weight", 4)),
    ]))


# ---------------------------------------------------------------- calibration (docs/calibration.md)

INPUT_MODES = {"float": "FP inputs", "quantized": "quantized inputs", "corrected": "corrected (default)", "": "–"}


@block("minilm-ptq", "benchmarks/results/ptq_transformer.json", command="python -m benchmarks.ptq_transformer")
def _(d):
    def parts(r):  # rows are named method[+inputs][+tune]
        method, *rest = r["row"].split("+")
        return method, (rest[0] if rest else ""), "tune" in rest

    note = (f"{d['calib']} calibration and {d['eval']} evaluation sentences, BQQ {d['sweeps']} sweeps per stack;"
            " rows merge several runs, so a row's seconds are its cost only when it solved all its jobs.")
    return section(provenance(d["commands"], d["env"]), rows_table(d["rows"], [
        ("bits", lambda r: f"{r['bits']}{'*' if parts(r)[0] == 'bqq' else ''}"),
        ("method", lambda r: LABELS[parts(r)[0]] + (" + c-BQQ" if parts(r)[2] else "")),
        ("calibration inputs", lambda r: INPUT_MODES[parts(r)[1]]),
        ("mean cosine", num("cosine", 4)),
        ("Spearman", num("spearman", 4)),
        ("bits/weight", num("bits_per_weight")),
        ("layers chosen", lambda r: chosen(r["chosen"])),
        ("seconds", num("seconds", 0)),
        ("jobs solved (rest cached)", lambda r: r["solved"]),
    ]), note)


@block("fashion-aware", "benchmarks/results/ptq_fashion_mnist_aware.json",
       command="python -m benchmarks.ptq_fashion_mnist --aware")
def _(d):
    fp = {"bits": 32, "method": "fp", "label": "FP", "calibrated": None, "tune_epochs": None, "inputs": "",
          "top1": d["fp_top1"]}
    cmd = "python -m benchmarks.ptq_fashion_mnist --aware --bits 1 2 3 --sweeps 1000 --calib-size 512"
    return section(provenance(cmd, d["env"]), rows_table([*d["rows"], fp], [
        ("bits", _bits),
        ("method", lambda r: r["label"]),
        ("calibration", lambda r: {None: "–", False: "none"}.get(
            r["calibrated"], "H" + (f" + {r['tune_epochs']} epochs" if r["tune_epochs"] else ""))),
        ("layer inputs", lambda r: INPUT_MODES[r["inputs"]]),
        ("top-1 (%)", num("top1", 2)),
        ("vs FP", lambda r: "–" if r is fp else f"{r['top1'] - d['fp_top1']:+.2f}"),
        ("bits/weight", lambda r: "32" if r is fp else f(r["bits_per_weight"])),
        ("quantize s", lambda r: "–" if r is fp else f(r["quantize_s"], 0)),
    ]))


# ---------------------------------------------------------------- LLMs (docs/llm.md)

GROUPING = "benchmarks/results/llm_grouping.json"
GROUPING_CMD = "python -m benchmarks.llm_grouping"
BUDGET = {None: "default", 4e4: "4e4", 8e4: "8e4", 8e8: "8e8", 1.7e9: "1.7e9"}


def _group(g: str) -> str:
    return "128 × input" if g == "128xin" else f"{g}²"


GROUPING_COLUMNS: Columns = [
    ("budget", lambda r: BUDGET.get(r["budget"], r["budget"])),
    ("sweeps", lambda r: "/".join(map(str, r["sweeps"]))),
]


@block("llm-grouping-7b", GROUPING, command=GROUPING_CMD)
def _(d):
    note = f"Source: {d['sources']['gauss-4096']['description']}, 2* BQQ."
    return section(provenance(GROUPING_CMD, d["environment"]), rows_table(
        [r for r in d["rows"] if r["source"] == "gauss-4096"], [
            ("group", lambda r: _group(r["group"])),
            *GROUPING_COLUMNS,
            ("weight error", num("rel_error", 4)),
            ("bits/weight", num("bits_fp32", 4)),
            ("µs/weight", num("us_per_weight", 2)),
            ("Llama-2-7B hours", num("llama2_7b_hours", 1)),
        ]), note)


@block("llm-grouping-real", GROUPING, command=GROUPING_CMD)
def _(d):
    cells = {(r["source"], r["group"]): r for r in d["rows"] if r["objective"] == "plain" and r["budget"] == 4e4}

    def cell(src, g):
        c = cells.get((src, g))
        return f"{f(c['rel_error'], 4)} ({f(c['bits_fp32'], 3)})" if c else "–"

    groups = ["128", "256", "512", "128xin"]
    body = rows_table([{"source": s} for s in ("tiny-llama", "minilm-ffn", "effnet-head")], [
        ("source", lambda r: r["source"]),
        *((_group(g), lambda r, g=g: cell(r["source"], g)) for g in groups),
    ])
    return section(provenance(GROUPING_CMD, d["environment"]), body,
                   "Budget 4e4; weight error, bits/weight in brackets.")


@block("llm-grouping-aware", GROUPING, command=GROUPING_CMD)
def _(d):
    rows = [r for r in d["rows"] if r["source"] == "tiny-llama" and r["group"] == "256"]
    return section(provenance(GROUPING_CMD, d["environment"]), rows_table(rows, [
        ("objective", lambda r: r["objective"]),
        *GROUPING_COLUMNS,
        ("output error under H", num("output_error", 4)),
        ("µs/weight", num("us_per_weight", 1)),
    ]), "Tiny Llama block 1, 256² groups, H from 32 calibration windows.")


LLM_SCALE = tuple(f"benchmarks/results/llm_scale_{s}.json" for s in (
    "tinyllama_bqq-data-free", "tinyllama_bqq-calibrated", "tinyllama_gptq-calibrated",
    "llama2-7b_bqq-data-free", "llama2-7b_gptq-calibrated"))
FULL_DEPTH = {"tinyllama": 22, "llama2-7b": 32}


def _scale_flags(r) -> str:
    flags = f"--shape {r['shape']} --method {r['method']}" + ("" if r["calibrated"] else " --data-free")
    if r["blocks_in_model"] != FULL_DEPTH[r["shape"]]:
        flags += f" --model-blocks {r['blocks_in_model']}"
    return f"`{flags} --blocks {r['blocks_solved']}`"


@block("llm-scale", *LLM_SCALE, command="python -m benchmarks.llm_scale")
def _(*runs):
    note = ("Random-init bf16 Llama of each shape; the first blocks solved, the whole model projected from the"
            " median block.")
    return section(provenance("python -m benchmarks.llm_scale FLAGS"), rows_table(list(runs), [
        ("shape", lambda r: r["shape"]),
        ("method", lambda r: (f"{r['bits']}* BQQ" if r["method"] == "bqq" else f"GPTQ {r['bits']}-bit g128")
         + (" calibrated" if r["calibrated"] else " data-free")),
        ("flags", _scale_flags),
        ("s per block", num("median_block_s", 1)),
        ("projected, whole model", lambda r: f"{r['projected_model_s'] / 60:.0f} min"),
        ("pass memory / (model + activations), full depth", num("memory_ratio_full_depth", 2)),
    ]), note)


@block("ptq-llm", "benchmarks/results/ptq_llm.json", command="python -m benchmarks.ptq_llm")
def _(d):
    rows = {(r["row"], r["bits"]): r for r in d["rows"]}

    def cell(name, b):
        r = rows.get((name, b))
        return f"{f(r['perplexity'], 3)} ({f(r['bits_per_weight'], 3)})" if r else "–"

    cmds, date = dated_commands(d["commands"])
    fp, noise, s = rows[("fp", None)], rows[("noise", None)], d["settings"]
    note = (f"`{s['model']}` ({s['parameters']:,} parameters), held-out perplexity at seqlen {s['seqlen']}, "
            f"{s['nsamples']} calibration windows. FP {f(fp['perplexity'], 3)}; FP with Gaussian noise of "
            f"0.5× each weight's standard deviation on every block linear {f(noise['perplexity'], 3)}. "
            "Bits/weight in brackets, every scalar counted.")
    bits = sorted({r["bits"] for r in d["rows"] if r["bits"]})
    return section(provenance(cmds, d["env"], date), rows_table([{"bits": b} for b in bits], [
        ("bits", lambda r: r["bits"]),
        *((label, lambda r, n=n: cell(n, r["bits"])) for label, n in (
            ("RTN g128", "rtn"), ("GPTQ g128", "gptq"), ("BQQ data-free", "bqq"), ("BQQ data-aware", "bqq-data"),
            ("auto (calibrated)", "auto"))),
    ]), note)


# ---------------------------------------------------------------- kernels (docs/kernels.md)

INFERENCE = "benchmarks/results/inference.json"


def _inference(d, part: str, body: str, note: str = "") -> str:
    """inference.json records per part the command that wrote it, with its date (``made_by``)."""
    made_by = d.get("made_by", {}).get(part) or f"`{d['command']}` ({d['date']})"
    return section(f"*{made_by} on {machine(d['env'])}.*", body, note)


@block("inference-layers", INFERENCE, command="python -m benchmarks.inference --parts layers")
def _(d):
    return _inference(d, "layers", rows_table(d["layers"], [
        ("weight", lambda r: shape(r["shape"])),
        ("tokens", lambda r: r["tokens"]),
        ("dense fp32", lambda r: f"{1e3 * r['dense_s']:.3g} ms"),
        ("2* BQQ", times("bqq2_ratio", 3)),
        ("2-bit UQ", times("uq2_ratio", 3)),
        ("3-bit UQ", times("uq3_ratio", 3)),
        ("torch int4 g128 (bf16)", times("int4_ratio", 3)),
        ("bf16", times("bf16_ratio")),
    ]), "Times relative to dense fp32 `F.linear` in the same run.")


@block("inference-generate", INFERENCE, command="python -m benchmarks.inference --parts generate")
def _(d):
    return _inference(d, "generate", rows_table(d["generate"], [
        ("model shape (random init)", lambda r: r["shape"]),
        ("weights", lambda r: r["row"]),
        ("decode tokens/s", num("tokens_per_s", 2)),
        ("vs fp32", times("speedup_fp32")),
        ("vs torch int4", times("speedup_int4")),
        ("prefill time vs fp32", times("prefill_ratio")),
        ("peak RSS", lambda r: f"{r['peak_rss_mb']:.0f} MB"),
    ]))


@block("inference-deit", INFERENCE, command="python -m benchmarks.inference --parts deit")
def _(d):
    return _inference(d, "deit", rows_table(d["deit"], [
        ("batch", lambda r: r["batch"]),
        ("fp32", ms("fp32_s")),
        ("2* BQQ", ms("bqq_s")),
        ("UQ", ms("uq_s")),
        ("BCQ", ms("bcq_s")),
        ("auto", lambda r: f"{1e3 * r['auto_s']:.1f} ({chosen(r['auto_methods'])})"),
        ("BQQ, dense-rebuild reference path", ms("reference_s")),
    ]), "DeiT-S at 2 bits, ms per forward.")


@block("inference-accuracy", INFERENCE, command="python -m benchmarks.inference --parts accuracy")
def _(d):
    llm = [[f"tiny Llama, {r['row']}", f"{r['layer_error_median']:.1e} / {r['layer_error_max']:.1e}",
            f"{r['ppl_numba-exact']:.4f} → {r['ppl_numba-table']:.4f}"] for r in d["accuracy"]["llm"]]
    vit = [[f"Fashion-MNIST ViT, {r['row']}", "–", f"top-1 {r['top1_numba-exact']:.2f} → {r['top1_numba-table']:.2f}"]
           for r in d["accuracy"]["vit"]]
    return _inference(d, "accuracy", table(
        ["model", "per-layer relative error, median / max", "exact → table path"], llm + vit))


@block("kernels-bqq", "benchmarks/results/kernels.json", command="python -m benchmarks.kernels")
def _(d):
    tokens = sorted({r["tokens"] for r in d["layers"]})
    cells = {(r["shape"], r["tokens"]): r["ratio"] for r in d["layers"]}
    shapes = [{"shape": s} for s in dict.fromkeys(r["shape"] for r in d["layers"])]
    return section(provenance("python -m benchmarks.kernels", d["env"]), rows_table(shapes, [
        ("weight", lambda r: shape(r["shape"])),
        *((f"{t} token{'s' if t != 1 else ''}", lambda r, t=t: f(cells.get((r["shape"], t)), 2)) for t in tokens),
    ]), f"2* BQQ ({d['stacks']} stacks, {d['group']}² groups) time / dense fp32 time.")


# ---------------------------------------------------------------- SLT and GNN examples


@block("slt-fashion", "examples/results/slt_fashion_mnist.json", command="python examples/slt_fashion_mnist.py")
def _(d):
    s = d["settings"]
    note = (f"{s['epochs']} epochs on {s['train_size']:,} training images, batch {s['batch']}, width {s['width']}; "
            "test on the 10k test images.")
    return section(provenance("python examples/slt_fashion_mnist.py", d["env"]), rows_table(d["results"], [
        ("model", lambda r: r["label"]),
        ("test top-1 (%)", num("accuracy", 2)),
        ("stored MB", num("stored_mb", 4)),
        ("mask bits/weight", num("bits_per_weight")),
        ("vs dense fp32", lambda r: f"{r['compression']:.1f}× smaller"),
        ("train s", num("train_seconds", 0)),
        ("reload exact", lambda r: "yes" if r["reload_exact"] else "no"),
    ]), note)


@block("gnn-slt", "examples/results/gnn_slt.json", command="python examples/gnn_slt.py")
def _(d):
    note = f"{d['settings']['epochs']} epochs; wall time {d['wall_seconds']:.0f} s."
    return section(provenance(d["command"], d["env"]), rows_table(d["summary"], [
        ("graph", lambda r: r["graph"]),
        ("model", lambda r: r["label"]),
        ("H", lambda r: r["hidden"]),
        ("test acc. (%)",
         lambda r: f(r["test_mean"], 1) + (f" ± {f(r['test_std'], 1)}" if len(r["seeds"]) > 1 else "")),
        ("stored MB", num("stored_mb", 4)),
        ("bits/weight", num("bits_per_weight")),
        ("memory vs dense fp32", lambda r: f"−{100 * r['reduction']:.1f} %" if r["reduction"] else "–"),
        ("train s", num("train_seconds", 1)),
        ("reload exact", lambda r: {True: "yes", False: "no", None: "–"}[r["reload_exact"]]),
    ]), note)


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
