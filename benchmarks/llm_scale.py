"""Scale check of ``bqq.quantize`` on LLMs: a random-init Llama of TinyLlama's shapes (about 1.1 B parameters)
or of Llama-2-7B's, in bf16, quantized on the CPU with GPTQ (4 bits, group 128), BQQ or auto, calibrated
(``bqq.Calibration``, the block-by-block pass) or data-free; a few blocks solved, the whole model projected.

    python -m benchmarks.llm_scale [--shape tinyllama|llama2-7b] [--method gptq|bqq|auto] [--bits B]
                                   [--data-free] [--blocks K] [--model-blocks K] [--nsamples 8] [--seqlen 256]
                                   [--device cpu] [--out DIR]

``--bits`` defaults to 4 for GPTQ (group 1x128, GPTQ's g128) and 2 for BQQ and auto (bqq's default groups for an
LLM, :mod:`bqq.ptq.plan`).

Reports the peak resident memory of the pass (Linux: ``VmHWM`` reset just before ``bqq.quantize``; model
and activations included; the process's peak, model build included, beside it): less the resident memory
of the runtime alone (python, torch, transformers, measured before the model is built), against the model's
own bytes plus the calibration activations (target: at most 1.5x); the wall time per block, how often the
embedding and each block ran per calibration batch (forward hooks on the embedding and on each block's first
module), and the projected time of the whole model
(``--blocks`` K < all solves the first K blocks; the projection multiplies the measured per-block
median by the block count; data-free, where no block runs, the per-block time is the wall time over K).
Random weights and random token ids: the time and memory of GPTQ do not depend on the values; BQQ's
annealing runs a fixed schedule, so its time does not either (its error would). Writes
``llm_scale_<shape>_<method>-<calibrated|data-free>.md`` and ``.json`` in ``--out`` (default
``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

import bqq
from bqq.compat import import_transformers

from .ptq_llm import PeakMemory

RESULTS = Path(__file__).resolve().parent / "results"
# (hidden, intermediate, layers, heads, kv heads, vocab): TinyLlama-1.1B and Llama-2-7B
# ("toy": the same code path in seconds, for the tests)
SHAPES = {"tinyllama": (2048, 5632, 22, 32, 4, 32000), "llama2-7b": (4096, 11008, 32, 32, 32, 32000),
          "toy": (128, 256, 3, 4, 2, 512)}
MEMORY_TARGET = 1.5


def build(shape: str, layers: int | None) -> torch.nn.Module:
    """A random-init bf16 LlamaForCausalLM of ``shape`` (``layers`` blocks if given)."""
    tr = import_transformers()
    hidden, inter, depth, heads, kv, vocab = SHAPES[shape]
    config = tr.LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers or depth,
                            num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                            max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: no fp32 copy of the weights ever exists
    try:
        with torch.device("cpu"):
            model = tr.LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.to(torch.bfloat16).eval()


def full_model_bytes(shape: str) -> int:
    """Bytes of the whole bf16 model of ``shape`` (all its blocks, untied embeddings), without building it."""
    hidden, inter, depth, heads, kv, vocab = SHAPES[shape]
    block = 2 * hidden * hidden + 2 * hidden * (hidden * kv // heads) + 3 * hidden * inter + 2 * hidden
    return 2 * (2 * vocab * hidden + depth * block + hidden)


def count_runs(model: torch.nn.Module, events: list[tuple[str, float]]) -> dict[str, int]:
    """Forward counts of the embedding and of each block (its input norm: a block runs when that does). A
    block's FP copy (``inputs="corrected"``) inherits the hook and counts apart, as "block i FP copy"; every
    run of a model block also appends (name, time) to ``events``."""
    counts: dict[str, int] = {}

    def hook(name: str, original: torch.nn.Module):
        def count(module, args):
            key = name if module is original else f"{name} FP copy"
            counts[key] = counts.get(key, 0) + 1
            if key == name:
                events.append((name, time.perf_counter()))
        return count

    embed = model.model.embed_tokens
    embed.register_forward_pre_hook(hook("embedding", embed))
    for i, layer in enumerate(model.model.layers):
        layer.input_layernorm.register_forward_pre_hook(hook(f"block {i}", layer.input_layernorm))
    return counts


def current_rss_bytes() -> int:
    """This process's resident memory now (Linux ``VmRSS``; 0 where /proc is absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def block_seconds(events: list[tuple[str, float]], blocks: int, end: float) -> list[float]:
    """Seconds per solved block: from its first run in the pass to the next block's first run (the last one
    to ``end``). The pass's opening forward (one run of every block, for the stage order) is skipped."""
    starts: dict[str, float] = {}
    seen_opening: set[str] = set()
    for name, t in events:
        if not name.startswith("block"):
            continue
        if name not in seen_opening:
            seen_opening.add(name)  # the opening forward runs each block once, in order
            continue
        starts.setdefault(name, t)
    marks = [starts[f"block {i}"] for i in range(blocks) if f"block {i}" in starts]
    return [b - a for a, b in zip(marks, [*marks[1:], end], strict=True)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tinyllama")
    p.add_argument("--method", choices=("gptq", "bqq", "auto"), default="gptq")
    p.add_argument("--bits", type=int, help="default: 4 for gptq, 2 for bqq and auto")
    p.add_argument("--data-free", action="store_true", help="no calibration data (not for gptq)")
    p.add_argument("--blocks", type=int, help="solve only the first K blocks (default: all)")
    p.add_argument("--model-blocks", type=int, help="build the model with this many blocks (default: all)")
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--device", default=None, help="where each block runs (Calibration.device)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.data_free and args.method == "gptq":
        p.error("GPTQ needs calibration data (without it, it is UQ)")
    bits = args.bits or (4 if args.method == "gptq" else 2)
    settings = {"method": args.method, "bits": bits, **({"group_size": (1, 128)} if args.method == "gptq" else {})}
    start = time.perf_counter()
    runtime_rss = current_rss_bytes()  # python, torch and transformers loaded, no model yet
    model = build(args.shape, args.model_blocks)
    depth = len(model.model.layers)
    blocks = min(args.blocks or depth, depth)
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    params = sum(t.numel() for t in model.state_dict().values())  # before quantization packs the weights
    hidden = model.config.hidden_size
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, model.config.vocab_size, (1, args.seqlen), generator=g),
                "attention_mask": torch.ones(1, args.seqlen, dtype=torch.long)} for _ in range(args.nsamples)]
    # two streams (FP and quantized) of hidden states in the model's dtype
    activation_bytes = 2 * args.nsamples * args.seqlen * hidden * 2
    events: list[tuple[str, float]] = []
    counts = count_runs(model, events)
    include = [f"model.layers.{i}.*" for i in range(blocks)]
    built = time.perf_counter() - start
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    memory = PeakMemory()  # the pass's own peak (Linux: VmHWM reset here), not the model build's
    memory.reset()
    quant_start = time.perf_counter()
    calibration = None if args.data_free else bqq.Calibration(batches, device=args.device)
    bqq.quantize(model, include=include, progress=True, calibration=calibration, **settings)
    wall = time.perf_counter() - quant_start
    peak = memory.peak_mb() * 2**20
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    per_block = [] if args.data_free else block_seconds(events, blocks, quant_start + wall)
    median = statistics.median(per_block) if per_block else wall / blocks
    groups = sorted({f"{m.qweight.grid.group_shapes()[0][0]}x{m.qweight.grid.group_shapes()[0][1]}"
                     for m in model.modules() if hasattr(m, "qweight")})
    runs = {name: count / args.nsamples for name, count in counts.items()}
    doc = {
        "shape": args.shape, "method": args.method, "bits": bits, "calibrated": not args.data_free, "groups": groups,
        "blocks_in_model": depth, "blocks_solved": blocks, "params": params,
        "model_bytes": model_bytes, "activation_bytes": activation_bytes, "peak_rss_bytes": peak,
        "rss_before_quantize_bytes": rss_before, "process_peak_rss_bytes": process_peak,
        "peak_source": memory.source, "runtime_rss_bytes": runtime_rss,
        "memory_ratio": (peak - runtime_rss) / (model_bytes + activation_bytes),
        "memory_ratio_raw": peak / (model_bytes + activation_bytes),
        # The pass's memory above the model is per layer (the widest layer's statistics and solve), not per
        # block: carried over unchanged to the model at full depth.
        "full_model_bytes": full_model_bytes(args.shape),
        "memory_ratio_full_depth": (peak - runtime_rss - model_bytes + full_model_bytes(args.shape))
        / (full_model_bytes(args.shape) + activation_bytes),
        "quantize_s": wall, "build_s": built, "per_block_s": per_block, "median_block_s": median,
        "projected_model_s": median * SHAPES[args.shape][2], "runs_per_batch": runs,
        "nsamples": args.nsamples, "seqlen": args.seqlen, "torch": torch.__version__, "bqq": bqq.__version__,
        "threads": torch.get_num_threads(), "machine": platform.machine(),
    }
    text = markdown(doc, " ".join(["python -m benchmarks.llm_scale", *(sys.argv[1:] if argv is None else argv)]))
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"llm_scale_{args.shape}_{args.method}-{'data-free' if args.data_free else 'calibrated'}"
    (args.out / f"{name}.md").write_text(text)
    (args.out / f"{name}.json").write_text(json.dumps(doc, indent=2))
    return doc


def markdown(doc: dict, command: str) -> str:
    gib = 2**30
    runs = doc["runs_per_batch"]
    block_runs = [runs.get(f"block {i}", 0) for i in range(doc["blocks_in_model"])]
    copy_runs = [v for k, v in runs.items() if k.endswith("FP copy")]
    met = "met" if doc["memory_ratio"] <= MEMORY_TARGET else "not met"
    mode = "calibrated (block by block)" if doc["calibrated"] else "data-free"
    lines = [
        f"# {doc['method'].upper()} {doc['bits']}-bit, {mode}, {doc['shape']} shapes, bf16, random init", "",
        f"Command: `{command}`; bqq {doc['bqq']}, torch {doc['torch']}, {doc['threads']} threads"
        + (f", {doc['nsamples']} x {doc['seqlen']} calibration tokens." if doc["calibrated"] else "."), "",
        "| quantity | value |", "|---|---|",
        f"| groups | {', '.join(doc['groups'])} |",
        f"| parameters | {doc['params'] / 1e9:.3f} B ({doc['blocks_in_model']} blocks, "
        f"{doc['blocks_solved']} solved) |",
        f"| model bytes | {doc['model_bytes'] / gib:.2f} GiB |",
        f"| calibration activations (two streams) | {doc['activation_bytes'] / gib:.3f} GiB |",
        f"| peak RSS during the pass | {doc['peak_rss_bytes'] / gib:.2f} GiB |",
        f"| peak RSS of the process (model build included) | {doc['process_peak_rss_bytes'] / gib:.2f} GiB |",
        f"| RSS of the runtime alone (python, torch, transformers; before the model) | "
        f"{doc['runtime_rss_bytes'] / gib:.2f} GiB |",
        f"| (peak - runtime) / (model + activations) | {doc['memory_ratio']:.2f} (target <= {MEMORY_TARGET}: {met}) |",
        f"| peak / (model + activations) | {doc['memory_ratio_raw']:.2f} |",
        f"| peak RSS before the pass (model build) | {doc['rss_before_quantize_bytes'] / gib:.2f} GiB |",
        *([f"| projected (peak - runtime) / (model + activations) with all {SHAPES[doc['shape']][2]} blocks "
           f"({doc['full_model_bytes'] / gib:.2f} GiB; the excess above the model carried over) | "
           f"{doc['memory_ratio_full_depth']:.2f} |"] if doc["blocks_in_model"] < SHAPES[doc["shape"]][2] else []),
        f"| quantize wall time | {doc['quantize_s']:.0f} s |",
        f"| per block (median) | {doc['median_block_s']:.1f} s |",
        f"| projected, all {SHAPES[doc['shape']][2]} blocks | {doc['projected_model_s'] / 60:.1f} min |",
        f"| embedding runs per batch | {runs.get('embedding', 0):.2f} |",
        f"| block runs per batch (max over solved blocks) | {max(block_runs[:doc['blocks_solved']] or [0]):.2f} |",
        f"| FP copy runs per batch (max over solved blocks) | {max(copy_runs or [0]):.2f} |",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
