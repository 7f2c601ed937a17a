"""Scale check of the block-by-block calibrated pass: a random-init Llama of TinyLlama's shapes (about 1.1 B
parameters) in bf16, quantized with GPTQ (group 128) through ``bqq.quantize(..., calibration=...)`` on the
CPU, and one block of Llama-2-7B's shapes for the 7B projection.

    python -m benchmarks.llm_scale [--shape tinyllama|llama2-7b] [--blocks K] [--nsamples 8] [--seqlen 256]
                                   [--device cpu] [--out DIR]

Reports the peak resident memory (``resource.getrusage``: the process's high-water mark, model and
activations included) against the model's own bytes plus the calibration activations (target: at most
1.5x), the wall time per block, how often the embedding and each block ran per calibration batch (forward
hooks on the embedding and on each block's first module), and the projected time of the whole model
(``--blocks`` K < all solves the first K blocks; the projection multiplies the measured per-block
median by the block count). Random weights and random token ids: time and memory do not depend on the
values. Writes ``llm_scale_<shape>.md`` and ``.json`` in ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

import bqq
from bqq.compat import import_transformers

RESULTS = Path(__file__).resolve().parent / "results"
# (hidden, intermediate, layers, heads, kv heads, vocab): TinyLlama-1.1B and Llama-2-7B
SHAPES = {"tinyllama": (2048, 5632, 22, 32, 4, 32000), "llama2-7b": (4096, 11008, 32, 32, 32, 32000)}
MEMORY_TARGET = 1.5


def build(shape: str, layers: int | None) -> torch.nn.Module:
    """A random-init bf16 LlamaForCausalLM of ``shape`` (``layers`` blocks if given)."""
    tr = import_transformers()
    hidden, inter, depth, heads, kv, vocab = SHAPES[shape]
    config = tr.LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers or depth,
                            num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                            max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = tr.LlamaForCausalLM(config)
    return model.to(torch.bfloat16).eval()


def count_runs(model: torch.nn.Module, events: list[tuple[str, float]]) -> dict[str, int]:
    """Forward counts of the embedding and of each block (its input norm: a block runs when that does; a
    block's FP copy carries the same hook, so it counts with it); every run also appends (name, time) to
    ``events``."""
    counts: dict[str, int] = {}

    def hook(name: str):
        def count(module, args):
            counts[name] = counts.get(name, 0) + 1
            events.append((name, time.perf_counter()))
        return count

    model.model.embed_tokens.register_forward_pre_hook(hook("embedding"))
    for i, layer in enumerate(model.model.layers):
        layer.input_layernorm.register_forward_pre_hook(hook(f"block {i}"))
    return counts


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
    p.add_argument("--blocks", type=int, help="solve only the first K blocks (default: all)")
    p.add_argument("--model-blocks", type=int, help="build the model with this many blocks (default: all)")
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--device", default=None, help="where each block runs (Calibration.device)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    start = time.perf_counter()
    model = build(args.shape, args.model_blocks)
    depth = len(model.model.layers)
    blocks = min(args.blocks or depth, depth)
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
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
    quant_start = time.perf_counter()
    bqq.quantize(model, bits=4, method="gptq", group_size=(1, 128), include=include, progress=True,
                 calibration=bqq.Calibration(batches, device=args.device))
    wall = time.perf_counter() - quant_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    per_block = block_seconds(events, blocks, quant_start + wall)
    median = statistics.median(per_block) if per_block else wall / blocks
    runs = {name: count / args.nsamples for name, count in counts.items()}
    doc = {
        "shape": args.shape, "blocks_in_model": depth, "blocks_solved": blocks, "params": sum(
            t.numel() for t in model.state_dict().values()),
        "model_bytes": model_bytes, "activation_bytes": activation_bytes, "peak_rss_bytes": peak,
        "rss_before_quantize_bytes": rss_before, "memory_ratio": peak / (model_bytes + activation_bytes),
        "quantize_s": wall, "build_s": built, "per_block_s": per_block, "median_block_s": median,
        "projected_model_s": median * SHAPES[args.shape][2], "runs_per_batch": runs,
        "nsamples": args.nsamples, "seqlen": args.seqlen, "torch": torch.__version__, "bqq": bqq.__version__,
        "threads": torch.get_num_threads(), "machine": platform.machine(),
    }
    text = markdown(doc, " ".join(["python -m benchmarks.llm_scale", *(argv or [])]))
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"llm_scale_{args.shape}.md").write_text(text)
    (args.out / f"llm_scale_{args.shape}.json").write_text(json.dumps(doc, indent=2))
    return doc


def markdown(doc: dict, command: str) -> str:
    gib = 2**30
    runs = doc["runs_per_batch"]
    block_runs = [v for k, v in runs.items() if k.startswith("block")]
    met = "met" if doc["memory_ratio"] <= MEMORY_TARGET else "not met"
    lines = [
        f"# Block-by-block GPTQ (4-bit, group 128), {doc['shape']} shapes, bf16, random init", "",
        f"Command: `{command}`; bqq {doc['bqq']}, torch {doc['torch']}, {doc['threads']} threads, "
        f"{doc['nsamples']} x {doc['seqlen']} calibration tokens.", "",
        "| quantity | value |", "|---|---|",
        f"| parameters | {doc['params'] / 1e9:.3f} B ({doc['blocks_in_model']} blocks, "
        f"{doc['blocks_solved']} solved) |",
        f"| model bytes | {doc['model_bytes'] / gib:.2f} GiB |",
        f"| calibration activations (two streams) | {doc['activation_bytes'] / gib:.3f} GiB |",
        f"| peak RSS | {doc['peak_rss_bytes'] / gib:.2f} GiB |",
        f"| peak / (model + activations) | {doc['memory_ratio']:.2f} (target <= {MEMORY_TARGET}: {met}) |",
        f"| quantize wall time | {doc['quantize_s']:.0f} s |",
        f"| per block (median) | {doc['median_block_s']:.1f} s |",
        f"| projected, all {SHAPES[doc['shape']][2]} blocks | {doc['projected_model_s'] / 60:.1f} min |",
        f"| embedding runs per batch | {runs.get('embedding', 0):.2f} |",
        f"| block runs per batch (max over solved blocks) | {max(block_runs[:doc['blocks_solved']] or [0]):.2f} |",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
