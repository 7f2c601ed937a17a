"""Weight-only PTQ of a decoder LLM, scored by perplexity with the GPTQ-lineage conventions (:mod:`bqq.lm`).

    python -m benchmarks.ptq_llm [--model DIR] [--text FILE | --dataset wikitext2] [--calib-text FILE]
                                 [--seqlen 256] [--nsamples 128] [--bits 2 3 4]
                                 [--rows fp noise rtn gptq bqq bqq-data auto] [--bqq-group 256] [--sweeps N]
                                 [--out DIR]

Defaults: the committed tiny Llama (``benchmarks/models/tiny-llama``, made by
``python -m benchmarks.train_tiny_llama``), perplexity on its held-out ``test.txt``, calibration windows from
its ``train.txt``. ``--dataset wikitext2`` uses WikiText-2 raw (test split for perplexity, train split for
calibration; needs ``datasets`` and a cached copy or network). ``--seqlen`` defaults to 2048 (the GPTQ
convention for real models) or the model's context (``max_position_embeddings``) when shorter: 256 for the
tiny model. Calibration: ``--nsamples`` windows of ``seqlen`` tokens at GPTQ's random offsets
(:func:`bqq.lm.calibration_batches`, seed ``--seed``). The model is loaded in float32 on the CPU.

Rows, for every ``--bits`` b (each quantizes a fresh copy of the FP model with ``bqq.quantize``):

- ``fp``: the unquantized model (once).
- ``noise``: the FP model with Gaussian noise of 0.5 × each weight's standard deviation added to every linear
  layer of the decoder blocks (once): how sensitive the model is, to read the quantized rows against (a model
  that barely notices such noise cannot separate methods by their perplexity ratios alone).
- ``rtn``: ``method="uq"``, ``group_size=(1, 128)``: GPTQ's "group 128" (one row × 128 columns share a scale
  and a zero point; a layer narrower than 128 columns gets its whole row). bqq's UQ searches each group's
  clip range on the weights (paper Alg. S.1), so it is a little stronger than min-max round-to-nearest.
- ``gptq``: ``method="gptq"``, the same groups and grids, with calibration (``bqq.Calibration(batches)``).
- ``bqq``: ``method="bqq"`` with b stacks (b* bits), data-free, in ``--bqq-group`` squares.
- ``bqq-data``: the same with calibration (output-aware BQQ, ``bqq.Calibration(batches)`` defaults).
- ``auto``: ``method="auto"`` with calibration (per layer the lowest output error among BQQ, GPTQ, UQ and BCQ),
  every candidate in ``--bqq-group`` squares (one group shape per layer).

``--bqq-group`` (default 256: 256×256 groups, clipped to the layer and balanced, e.g. 640 rows -> 3 × 213; ``paper``
for bqq's default, the model's ``hidden_size`` squares, the same for the tiny model) sets BQQ's groups, and
auto's. Chosen by measurement on the tiny model's layer-1 ``gate_proj`` (256×256 of it, 2 stacks): relative weight
error 0.2932 in one 256×256 group against 0.2940 in four 128×128 groups, at a third of the solve time (measured
with the schedule of BQQConfig version 3, which gave 128×128 groups 6000 sweeps). A 256×256 group at p stacks costs
p·128·512 binaries + 32·(3p+1) bits of scalars: p + 0.0015p + 0.0005 bits per weight.

``--sweeps`` sets BQQ's annealing sweeps per stack for every BQQ solve (bqq rows and auto's BQQ candidate; default:
bqq's ``auto_sweeps``; 834-5046 for these groups when the committed run was made, before BQQConfig version 4).
The committed run uses ``--sweeps 300`` to fit this shared
CPU: at bqq's defaults 2* data-free BQQ took 1304 s and 2* data-aware 1130 s (32 windows), the whole grid about
4.5 hours; at 300 sweeps 2* data-aware took 390 s with perplexity 69.293 against 69.301 at the defaults.

Reported per row: perplexity and its ratio to FP; bits per quantized weight (every binary, code and FP32
scalar, :func:`bqq.ptq.report.coverage_report`) and bits per parameter of the whole model (FP leftovers,
i.e. the tied embedding/``lm_head`` and the norms, at 32 bits); which method each layer got; the seconds
``bqq.quantize`` took; and the peak resident memory of this process during the row (Linux: the kernel's
high-water mark ``VmHWM``, reset before each row through ``/proc/self/clear_refs``; elsewhere
``resource.getrusage``'s peak since the process started, marked as such). Embeddings and the ``lm_head``
(tied to them) stay FP, as in the GPTQ-lineage tables; the results file lists what stayed FP.
Perplexity is evaluated under ``bqq.ptq.cached_weights`` (a dense Ŵ per layer, the same numbers as the
packed kernels up to float rounding, faster on a CPU). ``bqq.quantize`` runs with ``progress=False``; one line
is printed per row.

Results go to ``OUT/ptq_llm.{md,json}`` after every row; rows of an earlier run with the same settings (model,
texts, seqlen, nsamples, seed, BQQ groups, sweeps) stay unless measured again, so a grid can be filled in by parts;
a table written with other settings is moved aside (``ptq_llm.<hash>.json``/``.md``), never overwritten.
Targets: data-aware BQQ perplexity ≤ 1.05× FP at 4*, ≤ 1.15× at 3*, ≤ 1.6× at 2*, and below GPTQ
g128 at 2 and 3 bits.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

import bqq
from bqq.compat import import_transformers
from bqq.lm import WIKITEXT2, calibration_batches, load_tokens, perplexity
from bqq.ptq.report import coverage_report

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_MODEL = HERE / "models" / "tiny-llama"
ROWS = ("fp", "noise", "rtn", "gptq", "bqq", "bqq-data", "auto")
LABELS = {"fp": "FP", "noise": "FP + noise", "rtn": "RTN (UQ)", "gptq": "GPTQ", "bqq": "BQQ",
          "bqq-data": "BQQ data-aware", "auto": "auto"}
G128 = (1, 128)
NOISE = 0.5  # relative standard deviation of the "noise" row's Gaussian weight noise
GPTQ_CONTEXT = 2048
# (bits, bound on data-aware BQQ perplexity / FP perplexity)
RATIO_TARGETS = ((4, 1.05), (3, 1.15), (2, 1.6))
TARGETS = ("data-aware BQQ perplexity <= 1.05x FP at 4*, <= 1.15x at 3*, <= 1.6x at 2*; data-aware BQQ below "
           "GPTQ g128 at 2 and 3 bits")


def row_settings(row: str, bits: int, bqq_group: Any, sweeps: int | None = None) -> tuple[dict[str, Any], bool]:
    """(``bqq.quantize`` keyword arguments, calibrated) of a row."""
    solver = {} if sweeps is None else {"sweeps": sweeps}  # BQQ's options; under "auto" they go to BQQ
    if row == "rtn":
        return {"method": "uq", "group_size": G128}, False
    if row == "gptq":
        return {"method": "gptq", "group_size": G128}, True
    if row in ("bqq", "bqq-data"):
        return {"method": "bqq", "group_size": bqq_group, **solver}, row == "bqq-data"
    if row == "auto":
        return {"method": "auto", "group_size": bqq_group, **solver}, True
    raise ValueError(row)


class PeakMemory:
    """Peak resident memory of this process over a span: Linux's VmHWM after resetting it, else the process's
    peak so far (``resource.getrusage``)."""

    def __init__(self) -> None:
        self.source = "VmHWM reset per row (/proc/self/clear_refs)"
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
            self.peak_mb()
        except OSError:
            self.source = "resource.getrusage ru_maxrss (process peak since start)"

    def reset(self) -> None:
        if self.source.startswith("VmHWM"):
            Path("/proc/self/clear_refs").write_text("5")

    def peak_mb(self) -> float:
        if self.source.startswith("VmHWM"):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
            raise OSError("no VmHWM in /proc/self/status")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB on Linux


def evaluate(model: torch.nn.Module, tokens: torch.Tensor, seqlen: int) -> float:
    with bqq.ptq.cached_weights(model):
        return perplexity(model, tokens, seqlen=seqlen, progress=False)


def add_weight_noise(model: torch.nn.Module, relative: float, seed: int) -> int:
    """Add Gaussian noise of ``relative`` × each weight's standard deviation to every linear layer inside the
    decoder blocks (the layers the quantized rows quantize); returns how many layers got noise."""
    generator = torch.Generator().manual_seed(seed)
    layers = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in name]
    with torch.no_grad():
        for layer in layers:
            w = layer.weight
            w.add_(relative * w.std() * torch.randn(w.shape, generator=generator, dtype=w.dtype))
    return len(layers)


def run_noise_row(fp: torch.nn.Module, data: dict[str, Any], args, memory: PeakMemory, fp_ppl: float | None
                  ) -> dict[str, Any]:
    """How sensitive the model is: perplexity with Gaussian noise of ``NOISE`` × std on its block weights (a
    2-bit code's relative weight error is of that order), for reading the quantized rows' ratios."""
    memory.reset()
    model = copy.deepcopy(fp)
    layers = add_weight_noise(model, NOISE, args.seed)
    start = time.perf_counter()
    ppl = evaluate(model, data["test"], args.seqlen)
    print(f"FP + noise {NOISE:.2f}×std perplexity {ppl:.3f}", flush=True)
    return {"row": "noise", "bits": None, "method": f"fp + gaussian noise {NOISE}x std on {layers} block layers",
            "group": None, "calibrated": False, "perplexity": ppl, "ratio": ppl / fp_ppl if fp_ppl else None,
            "bits_per_weight": 32.0, "model_bits_per_param": 32.0, "chosen": {}, "seconds": 0.0,
            "eval_seconds": time.perf_counter() - start, "peak_rss_mb": memory.peak_mb()}


def run_row(fp: torch.nn.Module, row: str, bits: int | None, data: dict[str, Any], args, memory: PeakMemory,
            fp_ppl: float | None) -> dict[str, Any]:
    if row == "noise":
        return run_noise_row(fp, data, args, memory, fp_ppl)
    memory.reset()
    if row == "fp":
        start = time.perf_counter()
        ppl = evaluate(fp, data["test"], args.seqlen)
        result = {"row": row, "bits": None, "method": "fp", "group": None, "calibrated": False, "perplexity": ppl,
                  "ratio": 1.0, "bits_per_weight": 32.0, "model_bits_per_param": 32.0, "chosen": {}, "seconds": 0.0,
                  "eval_seconds": time.perf_counter() - start, "peak_rss_mb": memory.peak_mb()}
        print(f"FP                    perplexity {ppl:.3f}", flush=True)
        return result
    settings, calibrated = row_settings(row, bits, args.bqq_group, args.sweeps)
    model = copy.deepcopy(fp)
    calibration = bqq.Calibration(data["batches"]) if calibrated else None
    start = time.perf_counter()
    bqq.quantize(model, bits=bits, calibration=calibration, seed=args.seed, progress=False, **settings)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    ppl = evaluate(model, data["test"], args.seqlen)
    eval_seconds = time.perf_counter() - start
    coverage = coverage_report(model)
    chosen: dict[str, int] = {}
    for q in coverage["quantized"]:
        chosen[q["method"]] = chosen.get(q["method"], 0) + 1
    groups = sorted({tuple(layer.qweight.group_shape) for _, layer in bqq.ptq.quantized_layers(model)})
    result = {"row": row, "bits": bits, "method": settings["method"], "group": [list(g) for g in groups],
              "calibrated": calibrated, "perplexity": ppl, "ratio": ppl / fp_ppl if fp_ppl else None,
              "bits_per_weight": coverage["bits_per_weight"], "model_bits_per_param": coverage["model_bits_per_param"],
              "chosen": chosen, "seconds": seconds, "eval_seconds": eval_seconds, "peak_rss_mb": memory.peak_mb(),
              "quantized_fraction": coverage["quantized_fraction"], "layers": len(coverage["quantized"]),
              "left_fp": [{k: r[k] for k in ("module", "type", "params", "reason")} for r in coverage["left_fp"]]}
    ratio = f"{result['ratio']:.3f}x FP" if result["ratio"] else "no FP row"
    print(f"{bits} bits {LABELS[row]:15s} perplexity {ppl:.3f} ({ratio})  {result['bits_per_weight']:.3f} bits/weight "
          f"({result['model_bits_per_param']:.3f} per param)  quantize {seconds:.0f} s  peak RSS "
          f"{result['peak_rss_mb']:.0f} MB  layers {chosen}", flush=True)
    return result


def planned_rows(args) -> list[tuple[str, int | None]]:
    plan = [(row, None) for row in ("fp", "noise") if row in args.rows]
    for bits in args.bits:
        plan += [(row, bits) for row in ROWS if row in args.rows and row not in ("fp", "noise")]
    return plan


def earlier_rows(path: Path, settings: dict) -> tuple[list[dict], list[str]]:
    """Rows and commands of an earlier run written to ``path`` with the same ``settings`` (else none).

    A table written with other settings is not overwritten: it is moved aside (``ptq_llm.<settings hash>.json``
    and ``.md``), so hours of measured rows are never lost to a mistyped flag."""
    if not path.exists():
        return [], []
    old = json.loads(path.read_text())
    if old.get("settings") != settings:
        digest = hashlib.sha256(json.dumps(old.get("settings"), sort_keys=True).encode()).hexdigest()[:8]
        for suffix in (".json", ".md"):
            earlier = path.with_suffix(suffix)
            if earlier.exists():
                earlier.rename(path.with_name(f"{path.stem}.{digest}{suffix}"))
        print(f"{path}: written with other settings; moved aside as {path.stem}.{digest}.json/.md, "
              "starting a new table", flush=True)
        return [], []
    return old.get("rows", []), old.get("commands", [])


def table_order(row: dict) -> tuple:
    return (-1 if row["bits"] is None else row["bits"]), ROWS.index(row["row"])


def format_group(row: dict) -> str:
    if not row["group"]:
        return "–"
    return ", ".join(f"{r}x{c}" for r, c in row["group"])


def format_table(rows: list[dict]) -> str:
    fp = next((r["perplexity"] for r in rows if r["row"] == "fp"), None)
    lines = ["| bits | method | calibration | groups | perplexity | − FP | × FP | bits/weight | bits/param (model) | "
             "layers chosen | quantize s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["row"] in ("fp", "noise"):
            bits, bpw = "FP", "32 (fp32)"
        else:
            bits, bpw = f"{r['bits']}{'*' if r['method'] == 'bqq' else ''}", f"{r['bits_per_weight']:.3f}"
        bpp = bpw if r["row"] in ("fp", "noise") else f"{r['model_bits_per_param']:.3f}"
        chosen = ", ".join(f"{k} {v}" for k, v in sorted(r["chosen"].items())) or "–"
        ratio = "–" if r["ratio"] is None else f"{r['ratio']:.3f}"
        delta = "–" if fp is None else f"{r['perplexity'] - fp:+.3f}"
        label = f"FP + noise {NOISE}×std" if r["row"] == "noise" else LABELS[r["row"]]
        lines.append(f"| {bits} | {label} | {'yes' if r['calibrated'] else 'no'} | {format_group(r)} | "
                     f"{r['perplexity']:.3f} | {delta} | {ratio} | {bpw} | {bpp} | {chosen} | {r['seconds']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def check_targets(rows: list[dict]) -> list[str]:
    """One line per target the rows can answer, with the measured numbers and met / not met."""
    by = {(r["row"], r["bits"]): r for r in rows}
    verdict = {True: "**met**", False: "**not met**"}
    lines = []
    fp = by.get(("fp", None))
    for bits, bound in RATIO_TARGETS:
        r = by.get(("bqq-data", bits))
        if r is not None and fp is not None:
            ratio = r["perplexity"] / fp["perplexity"]
            lines.append(f"- {bits}* data-aware BQQ perplexity ≤ {bound}× FP: {r['perplexity']:.3f} / "
                         f"{fp['perplexity']:.3f} = {ratio:.3f}×, {verdict[ratio <= bound]}")
    for bits in (2, 3):
        b, g = by.get(("bqq-data", bits)), by.get(("gptq", bits))
        if b is not None and g is not None:
            lines.append(f"- {bits}* data-aware BQQ below GPTQ g128 at {bits} bits: {b['perplexity']:.3f} "
                         f"({b['bits_per_weight']:.3f} bits/weight) against {g['perplexity']:.3f} "
                         f"({g['bits_per_weight']:.3f}), {verdict[b['perplexity'] < g['perplexity']]}")
    return lines


def parse_group(value: str) -> Any:
    """``"128"`` -> 128, ``"64x128"`` -> (64, 128), ``"paper"`` -> ``"paper"``."""
    if value == "paper":
        return value
    if "x" in value:
        rows, cols = value.split("x")
        return int(rows), int(cols)
    return int(value)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="Hugging Face causal LM directory")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--text", type=Path, help="text to measure perplexity on (default: the model's test.txt)")
    source.add_argument("--dataset", choices=[WIKITEXT2], help="WikiText-2 raw: test split for perplexity, train "
                        "split for calibration")
    p.add_argument("--calib-text", type=Path, help="calibration text (default: the model's train.txt, or WikiText-2 "
                   "train with --dataset)")
    p.add_argument("--seqlen", type=int, help=f"window length (default: {GPTQ_CONTEXT} or the model's context if "
                   "shorter)")
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows")
    p.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    p.add_argument("--bqq-group", type=parse_group, default=256, help="BQQ (and auto) groups: N (NxN), RxC or paper")
    p.add_argument("--sweeps", type=int, help="BQQ annealing sweeps per stack (default: bqq's auto_sweeps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    transformers = import_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    fp = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    context = getattr(fp.config, "max_position_embeddings", None) or GPTQ_CONTEXT
    args.seqlen = args.seqlen or min(GPTQ_CONTEXT, context)
    if args.dataset:
        test_source, calib_source = WIKITEXT2, args.calib_text or WIKITEXT2
        test = load_tokens(WIKITEXT2, tokenizer, split="test")
    else:
        test_source = args.text or args.model / "test.txt"
        calib_source = args.calib_text or args.model / "train.txt"
        test = load_tokens(test_source, tokenizer)
    calib = load_tokens(calib_source, tokenizer, split="train")
    batches = calibration_batches(calib, args.nsamples, args.seqlen, seed=args.seed)
    params = sum(p.numel() for p in fp.parameters())
    print(f"{args.model}: {type(fp).__name__}, {params:,} parameters; perplexity on {test_source} "
          f"({test.shape[1]:,} tokens, {test.shape[1] // args.seqlen} windows of {args.seqlen}); calibration "
          f"{args.nsamples} windows of {calib_source} ({calib.shape[1]:,} tokens)", flush=True)

    def name(path: Any) -> str:
        """A path relative to the repository when inside it (results files name no home directories)."""
        if str(path) == WIKITEXT2:
            return WIKITEXT2
        try:
            return str(Path(path).resolve().relative_to(HERE.parent))
        except (ValueError, TypeError):
            return str(path)

    memory = PeakMemory()
    env = {"bqq": bqq.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version(), "threads": torch.get_num_threads(), "peak_rss": memory.source}
    settings = {"model": name(args.model), "test": name(test_source), "calibration": name(calib_source),
                "seqlen": args.seqlen, "nsamples": args.nsamples, "seed": args.seed,
                "bqq_group": list(args.bqq_group) if isinstance(args.bqq_group, tuple) else args.bqq_group,
                "sweeps": args.sweeps,
                "test_tokens": test.shape[1], "calibration_tokens": calib.shape[1], "parameters": params}
    command = " ".join(["python -m benchmarks.ptq_llm", *(sys.argv[1:] if argv is None else argv)])
    stamp = f"{command}` ({datetime.date.today().isoformat()})"
    args.out.mkdir(parents=True, exist_ok=True)
    earlier, commands = earlier_rows(args.out / "ptq_llm.json", settings)
    commands = [c for c in commands if c.split("` (")[0] != command] + [stamp]
    fp_ppl = next((r["perplexity"] for r in earlier if r["row"] == "fp"), None)

    rows: list[dict] = []
    started = time.perf_counter()
    for row, bits in planned_rows(args):
        result = run_row(fp, row, bits, {"test": test, "batches": batches}, args, memory, fp_ppl)
        if row == "fp":
            fp_ppl = result["perplexity"]
        rows.append(result)
        done = {(r["row"], r["bits"]) for r in rows}
        table = sorted([r for r in earlier if (r["row"], r["bits"]) not in done] + rows, key=table_order)
        write_results(args, table, commands, env, settings, time.perf_counter() - started)
    print(format_table(rows))
    print("\n".join(check_targets(table)))
    return rows


def write_results(args, table: list[dict], commands: list[str], env: dict, settings: dict, wall: float) -> None:
    """``OUT/ptq_llm.md`` and ``.json`` from the rows so far (written after every row)."""
    left_fp = next((r["left_fp"] for r in table if r.get("left_fp") is not None), [])
    fraction = next((r["quantized_fraction"] for r in table if r.get("quantized_fraction") is not None), None)
    kept = "; ".join(f"`{r['module']}` ({r['type']}, {r['params']:,} params: {r['reason']})" for r in left_fp)
    group = settings["bqq_group"]
    group = f"{group}x{group}" if isinstance(group, int) else ("x".join(map(str, group)) if isinstance(group, list)
                                                               else group)
    header = [
        f"# Decoder LLM, weight-only PTQ with `bqq.quantize`: perplexity ({settings['model']})",
        "",
        f"Commands: {', '.join('`' + c for c in commands)}",
        "",
        f"Model `{settings['model']}` ({settings['parameters']:,} parameters), float32 on the CPU. Perplexity "
        f"(`bqq.lm.perplexity`, GPTQ convention: non-overlapping windows of {settings['seqlen']} tokens, trailing "
        f"partial window dropped) on `{settings['test']}` ({settings['test_tokens']:,} tokens); calibration: "
        f"{settings['nsamples']} windows of {settings['seqlen']} tokens of `{settings['calibration']}` "
        f"({settings['calibration_tokens']:,} tokens) at GPTQ's random offsets, seed {settings['seed']}. "
        f"RTN and GPTQ: UQ codes in groups of 1×128 (GPTQ's g128; scale and zero point as two FP32 scalars per "
        f"group, so b + 0.5 bits per weight); BQQ and auto: {group} groups, "
        f"{'bqq default (auto_sweeps)' if settings['sweeps'] is None else settings['sweeps']} annealing sweeps per "
        f"stack. Every quantized row quantizes all "
        f"{next((r['layers'] for r in table if r.get('layers')), '?')} linear layers of the decoder blocks"
        + (f" ({100 * fraction:.1f} % of the parameters)" if fraction is not None else "")
        + f"; left FP: {kept or 'nothing'}. bits/param (model) counts those FP leftovers at 32 bits.",
        "",
        f"Environment: bqq {env['bqq']}, torch {env['torch']}, transformers {env['transformers']}, python "
        f"{env['python']}, {env['threads']} threads. Peak RSS: {env['peak_rss']}. Wall time of the last command: "
        f"{wall:.0f} s.",
        "",
        f"Targets: {TARGETS}.",
        "",
    ]
    text = "\n".join(header) + "\n" + format_table(table) + "\n\n" + "\n".join(check_targets(table)) + "\n"
    (args.out / "ptq_llm.md").write_text(text)
    (args.out / "ptq_llm.json").write_text(json.dumps(
        {"env": env, "commands": commands, "settings": settings, "targets": TARGETS, "wall_seconds": wall,
         "rows": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
