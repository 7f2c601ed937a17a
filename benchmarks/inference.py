"""CPU inference with packed low-bit layers: layers, switch points, accuracy of the table path, generate().

    python -m benchmarks.inference [--quick] [--parts layers sweep accuracy generate deit] [--out DIR]

Every timing is a median of interleaved samples (``benchmarks.kernels.paired_medians``) and every ratio is
against dense fp32 ``F.linear`` (or the fp32 model) measured in the same run, on this machine's threads.

* **layers**: one layer, weights 4096×4096, 4096×11008, 11008×4096 and 1536×384 at 1, 8, 197 and 2048
  tokens: dense fp32, bf16 ``F.linear``, torch's int4 weight-only CPU kernel (``_weight_int4pack_mm_for_cpu``,
  4-bit codes in groups of 128, bf16 activations: its fast path, what torchao's CPU int4 config calls),
  and bqq's default CPU backend for 2* BQQ (256×256 groups, two stacks), 2-bit and 3-bit UQ (1×128
  groups). Codes are random (a kernel's time does not depend on their values).
* **overhead**: a small layer's fixed cost at one token: the compiled kernel, ``bqq_linear`` and a
  ``QuantizedLinear`` forward against ``F.linear``.
* **sweep**: the table, exact and rebuild paths over token counts, and the switch points they suggest
  (``kernels.cpu.linear``).
* **accuracy**: the table path against the exact one on real weights: per-layer relative output error
  and perplexity of the committed tiny Llama (2* BQQ data-free and 2-bit RTN g128), and top-1 of the
  committed Fashion-MNIST ViT at 2 bits.
* **generate**: Hugging Face ``generate()`` at batch 1 on a TinyLlama-1.1B-shaped decoder (random init)
  and on Llama-2-7B widths (4096/11008, 32 heads) with 4 of its 32 blocks (fp32 weights of all 32 do not
  fit this machine's memory): decode tokens/s (64 new tokens after a 128-token prompt, greedy), prefill
  time of 512 tokens, peak RSS; rows fp32, bf16, torch int4 g128 (a bf16 model), bqq 2* BQQ, 2-bit and
  3-bit UQ (random codes, as for the layers). Each row runs in its own process (clean peak RSS).
* **deit**: DeiT-S (random init) batch 1 and 8 latency, fp32 against 2-bit BQQ, UQ and ``auto``
  (``benchmarks.kernels.model_rows``).

Outputs ``inference.md`` and ``inference.json`` in ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import bqq
import bqq_kernels as kernels
from benchmarks.kernels import paired_medians, random_bqq_matrix, random_layout, random_plane_layout
from bqq.format import pack_bits
from bqq.grouping import GroupGrid
from bqq.methods.uniform import UQConfig, UQMatrix

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (1536, 384)]
TOKENS = [1, 8, 197, 2048]
BQQ_GROUP = 256
UQ_GROUP = 128
INT4_GROUP = 128
SWEEP_TOKENS = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 197]
LLM_SHAPES = {  # Hugging Face LlamaConfig fields
    "tinyllama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                           num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048),
    "llama2-7b-4blocks": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=4, num_attention_heads=32,
                              num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "quick": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=1000, max_position_embeddings=512),  # --quick only
}
LLM_ROWS = ["fp32", "bf16", "torch-int4", "bqq-2*", "uq-2", "uq-3"]
PARTS = ["layers", "overhead", "sweep", "accuracy", "generate", "deit"]
# The decode targets (ratios to dense fp32 / to the torch int4 kernel, this machine, medians)
TARGETS = {"one_token_dense": 0.15, "one_token_int4": 0.5, "eight_tokens_dense": 0.3, "small_layer": 0.6,
           "prefill_dense": 1.0, "tiny_fp32": 3.0, "tiny_int4": 1.5, "llama7b_fp32": 4.0, "deit_batch1": 0.8,
           "perplexity": 1e-3, "layer_error": 2e-3}


class Int4Linear(nn.Module):
    """torch's int4 weight-only CPU linear (codes 0..15 in groups of INT4_GROUP columns, bf16 scale and zero
    per group): y = x (q − 8)·scale + zero, in bf16 (the peer's fast path)."""

    def __init__(self, out_features: int, in_features: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        codes = torch.randint(0, 16, (out_features, in_features), dtype=torch.int32, generator=gen)
        self.packed = torch._convert_weight_to_int4pack_for_cpu(codes, 2)
        groups = in_features // INT4_GROUP
        self.scales_and_zeros = (torch.rand(groups, out_features, 2, generator=gen) * 0.01).to(torch.bfloat16)
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        out = torch._weight_int4pack_mm_for_cpu(x2, self.packed, INT4_GROUP, self.scales_and_zeros)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def random_uq_matrix(shape: tuple[int, int], bits: int, seed: int = 0) -> UQMatrix:
    """A UQ matrix in 1×UQ_GROUP groups with random codes, steps and zero points (RTN of a 1B model takes
    this CPU over an hour; a kernel's time does not depend on the codes)."""
    rng = np.random.default_rng(seed)
    grid = GroupGrid.build(shape, (1, UQ_GROUP))
    codes = []
    for gm, gn in grid.group_shapes():
        planes = rng.integers(0, 2, (bits, gm, gn), dtype=np.uint8)
        codes.append(pack_bits(planes))
    scale = (rng.random(len(grid)) * 0.01 + 1e-3).astype(np.float32)
    zero = (-scale * (2**bits - 1) / 2).astype(np.float32)
    return UQMatrix(shape, "float32", grid, bits, 0, UQConfig(), codes=codes, scale=scale, zero=zero)


# ---------------------------------------------------------------------------------------------------- layers
def layer_rows(shapes, tokens, repeats: int) -> list[dict]:
    rows = []
    for shape in shapes:
        m, n = shape
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(m, n, generator=gen) * 0.02
        wb = w.to(torch.bfloat16)
        int4 = Int4Linear(m, n)
        layouts = {"bqq2": random_layout(shape, BQQ_GROUP), "uq2": random_plane_layout(shape, 2, (1, UQ_GROUP)),
                   "uq3": random_plane_layout(shape, 3, (1, UQ_GROUP))}
        for t in tokens:
            x = torch.randn(t, n, generator=gen)
            xb = x.to(torch.bfloat16)
            fns = {"dense": lambda x=x, w=w: F.linear(x, w), "bf16": lambda xb=xb, wb=wb: F.linear(xb, wb),
                   "int4": lambda xb=xb, int4=int4: int4(xb)}
            for name, layout in layouts.items():
                fns[name] = lambda x=x, layout=layout: kernels.bqq_linear(x, layout)
            with torch.inference_mode():
                med = paired_medians(fns, repeats, budget_s=1.5)
            row = {"shape": f"{m}x{n}", "tokens": t, **{f"{k}_s": v for k, v in med.items()},
                   **{f"{k}_ratio": med[k] / med["dense"] for k in med if k != "dense"},
                   **{f"{k}_over_int4": med[k] / med["int4"] for k in layouts}}
            rows.append(row)
            print(f"{m}x{n} x{t}: dense {med['dense'] * 1e3:.3f} ms; " + ", ".join(
                f"{k} {row[f'{k}_ratio']:.3f}x" for k in med if k != "dense"), flush=True)
    return rows


# -------------------------------------------------------------------------------------------------- overhead
def overhead_rows(repeats: int) -> list[dict]:
    """The fixed cost of a small quantized layer at one token (1536×384, 2-bit): the compiled kernel alone
    on prepared arrays, ``bqq_kernels.bqq_linear`` (checks, backend choice, numpy views) and a
    ``QuantizedLinear`` forward (module call), against ``F.linear`` in fp32."""
    from bqq_kernels.cpu import table_matmul

    shape = (1536, 384)
    rows = []
    x = torch.randn(1, shape[1])
    xn = x.numpy()
    w = torch.randn(shape) * 0.02
    bqq_matrix = random_bqq_matrix(shape, BQQ_GROUP, magnitude=0.01)
    for name, matrix in (("2* BQQ", bqq_matrix), ("2-bit UQ", random_uq_matrix(shape, 2))):
        layer = bqq.ptq.QuantizedLinear(matrix)
        layout = layer.kernel_layout()
        arrays = table_matmul.decode_arrays(layout.tensors)
        entry = table_matmul._bqq_native if name == "2* BQQ" else table_matmul._plane_native
        out = np.empty((1, shape[0]), np.float32)
        fns = {"dense": lambda: F.linear(x, w),
               "kernel": lambda entry=entry, out=out, arrays=arrays: entry(False, xn, out, *arrays),  # serial
               "bqq_linear": lambda layout=layout: kernels.bqq_linear(x, layout),
               "module": lambda layer=layer: layer(x)}
        with torch.inference_mode():
            med = paired_medians(fns, repeats * 3)
        rows.append({"method": name, **{f"{k}_us": v * 1e6 for k, v in med.items()}})
        print(f"overhead {name}: " + ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in med.items()), flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------- sweep
def sweep_rows(shapes, tokens, repeats: int) -> list[dict]:
    """Per shape and token count: each CPU path of 2* BQQ and 2-bit UQ, seconds."""
    rows = []
    for shape in shapes:
        m, n = shape
        bqq_layout, uq_layout = random_layout(shape, BQQ_GROUP), random_plane_layout(shape, 2, (1, UQ_GROUP))
        for t in tokens:
            x = torch.randn(t, n)
            paths = {"bqq_table": (bqq_layout, "numba-table"), "bqq_exact": (bqq_layout, "numba-exact"),
                     "uq_table": (uq_layout, "numba-table"), "uq_exact": (uq_layout, "numba-exact"),
                     "uq_rebuild": (uq_layout, "numba-rebuild")}
            fns = {name: (lambda x=x, layout=layout, backend=backend: kernels.bqq_linear(x, layout, backend=backend))
                   for name, (layout, backend) in paths.items()}
            with torch.inference_mode():
                med = paired_medians(fns, repeats, budget_s=1.0)
            row = {"shape": f"{m}x{n}", "tokens": t, **{f"{k}_s": v for k, v in med.items()},
                   "bqq_fastest": min(("table", "exact"), key=lambda p: med[f"bqq_{p}"]),
                   "uq_fastest": min(("table", "exact", "rebuild"), key=lambda p: med[f"uq_{p}"])}
            rows.append(row)
            print(f"sweep {m}x{n} x{t}: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in med.items()), flush=True)
    return rows


def suggested_switches(rows: list[dict]) -> dict:
    """The smallest token count from which the table path stops being fastest on every swept shape."""
    out = {}
    for family in ("bqq", "uq"):
        counts = sorted({r["tokens"] for r in rows})
        losing = [t for t in counts if any(r["tokens"] == t and r[f"{family}_fastest"] != "table" for r in rows)]
        out[f"{family}_table_below"] = losing[0] if losing else None
    return out


# ------------------------------------------------------------------------------------------------- accuracy
def _set_backend(name: str | None) -> None:
    kernels.set_default_backend("cpu", name)


def accuracy_rows(quick: bool) -> dict:
    """The table path against the exact one on the committed tiny Llama and Fashion-MNIST ViT."""
    from benchmarks import ptq_fashion_mnist as fashion
    from benchmarks.ptq_llm import DEFAULT_MODEL
    from bqq.compat import import_transformers
    from bqq.datasets import load_fashion_mnist
    from bqq.lm import load_tokens, perplexity

    transformers = import_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(DEFAULT_MODEL)
    test = load_tokens(DEFAULT_MODEL / "test.txt", tokenizer)
    if quick:
        test = test[:, :2048]
    result: dict = {"llm": [], "vit": []}
    settings = {"bqq-2*": dict(method="bqq", group_size=256), "uq-2": dict(method="uq", group_size=(1, 128))}
    for name, opts in settings.items():
        model = transformers.AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL, dtype=torch.float32).eval()
        bqq.quantize(model, bits=2, progress=False, **opts)
        errors = layer_errors(model, test[:, :256])
        row = {"row": name, "layer_error_median": float(np.median(errors)), "layer_error_max": float(max(errors)),
               "layers": len(errors)}
        for backend in ("numba-exact", "numba-table"):
            _set_backend(backend)
            try:
                start = time.perf_counter()
                with torch.inference_mode():
                    row[f"ppl_{backend}"] = perplexity(model, test, seqlen=256, progress=False)
                row[f"ppl_{backend}_s"] = time.perf_counter() - start
            finally:
                _set_backend(None)
        row["ppl_relative_change"] = row["ppl_numba-table"] / row["ppl_numba-exact"] - 1
        result["llm"].append(row)
        print(f"tiny Llama {name}: layer error median {row['layer_error_median']:.2e} "
              f"max {row['layer_error_max']:.2e}; "
              f"perplexity exact {row['ppl_numba-exact']:.4f} table {row['ppl_numba-table']:.4f}", flush=True)
    x, y = load_fashion_mnist("t10k")
    if quick:
        x, y = x[:1000], y[:1000]
    for method in ("bqq", "uq"):
        model = fashion.trained_model()
        bqq.quantize(model, bits=2, method=method, progress=False)
        row = {"row": f"{method}-2"}
        for backend in ("numba-exact", "numba-table"):
            _set_backend(backend)
            try:
                with torch.inference_mode():
                    hits = sum(int((model(x[i:i + 100]).argmax(1) == y[i:i + 100]).sum())
                               for i in range(0, len(x), 100))
            finally:
                _set_backend(None)
            row[f"top1_{backend}"] = 100.0 * hits / len(x)
        result["vit"].append(row)
        print(f"Fashion ViT {method} 2-bit: top-1 exact {row['top1_numba-exact']:.2f} "
              f"table {row['top1_numba-table']:.2f}",
              flush=True)
    return result


def layer_errors(model: nn.Module, tokens: torch.Tensor) -> list[float]:
    """Per quantized layer: ‖table − exact‖ / ‖exact‖ on the layer's real inputs (one forward of ``tokens``),
    every token one call, as at decode."""
    inputs: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, args, output) -> None:  # None: the layer's output stays as it is
            inputs.setdefault(name, args[0].detach())
        return hook

    hooks = [layer.register_forward_hook(keep(name)) for name, layer in bqq.ptq.quantized_layers(model)]
    with torch.inference_mode():
        model(tokens)
    for hook in hooks:
        hook.remove()
    errors = []
    for name, layer in bqq.ptq.quantized_layers(model):
        x = inputs[name].reshape(-1, inputs[name].shape[-1])[:64]
        layout = layer.kernel_layout()
        exact = kernels.bqq_linear(x, layout, backend="numba-exact")
        table = torch.cat([kernels.bqq_linear(x[i:i + 1], layout, backend="numba-table") for i in range(len(x))])
        errors.append(float((table - exact).norm() / exact.norm()))
    return errors


# ------------------------------------------------------------------------------------------------- generate
def build_llm(shape: str, row: str) -> nn.Module:
    """A random-init Llama-shaped decoder with its block linears replaced as ``row`` says."""
    from bqq.compat import import_transformers

    transformers = import_transformers()
    config = transformers.LlamaConfig(**LLM_SHAPES[shape], tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    if row == "bf16":
        return model.to(torch.bfloat16)
    if row == "fp32":
        return model
    if row == "torch-int4":
        model.to(torch.bfloat16)
    for index, (name, linear) in enumerate([(n, m) for n, m in model.model.layers.named_modules()
                                             if isinstance(m, nn.Linear)]):
        parent = model.model.layers.get_submodule(name.rpartition(".")[0])
        m, n = linear.weight.shape
        if row == "torch-int4":
            new = Int4Linear(m, n, seed=index)
        elif row == "bqq-2*":
            new = bqq.ptq.QuantizedLinear(random_bqq_matrix((m, n), BQQ_GROUP, seed=index, magnitude=0.01))
        else:
            new = bqq.ptq.QuantizedLinear(random_uq_matrix((m, n), int(row[-1]), seed=index))
        setattr(parent, name.rpartition(".")[2], new)
    return model


def generate_row(shape: str, row: str, new_tokens: int, prompt: int, prefill: int) -> dict:
    """One row, in this process: build, then time prefill and generate()."""
    from benchmarks.ptq_llm import PeakMemory

    start = time.perf_counter()
    model = build_llm(shape, row)
    build_s = time.perf_counter() - start
    memory = PeakMemory()
    memory.reset()
    gen = torch.Generator().manual_seed(1)
    vocab = LLM_SHAPES[shape]["vocab_size"]
    ids = torch.randint(0, vocab, (1, prompt), generator=gen)
    long_ids = torch.randint(0, vocab, (1, prefill), generator=gen)
    with torch.inference_mode():
        model(ids[:, :8])  # warm-up: numba compiles, caches load
        model.generate(ids[:, :16], max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
        t = time.perf_counter()
        model(long_ids, use_cache=False)
        prefill_s = time.perf_counter() - t
        t = time.perf_counter()
        model(ids, use_cache=False)
        prompt_s = time.perf_counter() - t
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=0)
        generate_s = time.perf_counter() - t
    assert out.shape[1] == prompt + new_tokens
    decode_s = max(generate_s - prompt_s, 1e-9)
    return {"shape": shape, "row": row, "build_s": build_s, "prefill_s": prefill_s, "prompt_s": prompt_s,
            "generate_s": generate_s, "tokens_per_s": new_tokens / decode_s,
            "peak_rss_mb": memory.peak_mb(), "rss_source": memory.source}


def generate_rows(shapes, rows, new_tokens: int, prompt: int, prefill: int) -> list[dict]:
    """Each (shape, row) in a fresh process (its own peak RSS)."""
    results = []
    for shape in shapes:
        for row in rows:
            cmd = [sys.executable, "-m", "benchmarks.inference", "--one-llm", shape, row, "--new-tokens",
                   str(new_tokens), "--prompt", str(prompt), "--prefill", str(prefill)]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if done.returncode != 0:
                raise RuntimeError(f"{shape} {row} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["date"] = time.strftime("%Y-%m-%d %H:%M")
            results.append(result)
            print(f"{shape} {row}: {result['tokens_per_s']:.2f} tokens/s, "
                  f"prefill {prefill} {result['prefill_s']:.2f} s, "
                  f"peak RSS {result['peak_rss_mb']:.0f} MB (built in {result['build_s']:.0f} s)", flush=True)
    return results


def relative_speeds(results: list[dict]) -> None:
    """Each row's tokens/s over its shape's fp32 and torch int4 rows, and prefill time over fp32's."""
    for r in results:
        fp = next((x for x in results if x["shape"] == r["shape"] and x["row"] == "fp32"), None)
        int4 = next((x for x in results if x["shape"] == r["shape"] and x["row"] == "torch-int4"), None)
        r["speedup_fp32"] = r["tokens_per_s"] / fp["tokens_per_s"] if fp else None
        r["speedup_int4"] = r["tokens_per_s"] / int4["tokens_per_s"] if int4 else None
        r["prefill_ratio"] = r["prefill_s"] / fp["prefill_s"] if fp else None


# --------------------------------------------------------------------------------------------------- report
def markdown(data: dict) -> str:
    env = data["env"]
    lines = ["# CPU inference: packed low-bit layers against dense fp32 and torch's int4 kernel", "",
             "Commands: " + "; ".join(f"{part}: {how}" for part, how in data.get("made_by", {}).items()) + ". "
             f"Machine: {env['cpu']}, {env['threads']} threads; "
             f"shuffle: {env['shuffle']}; torch {env['torch']}, numba {env['numba']}. Medians of interleaved samples; "
             "ratios in one run (below 1: faster than dense fp32).", ""]
    if data.get("layers"):
        lines += ["## Layers (random codes; time over dense fp32 `F.linear`)", "",
                  "| weight | tokens | dense fp32 ms | bf16 | torch int4 g128 | 2* BQQ | 2-bit UQ | 3-bit UQ | "
                  "2* BQQ / int4 | 2-bit UQ / int4 |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in data["layers"]:
            lines.append(f"| {r['shape']} | {r['tokens']} | {r['dense_s'] * 1e3:.3f} | {r['bf16_ratio']:.2f}× | "
                         f"{r['int4_ratio']:.3f}× | {r['bqq2_ratio']:.3f}× | {r['uq2_ratio']:.3f}× | "
                         f"{r['uq3_ratio']:.3f}× | {r['bqq2_over_int4']:.2f}× | {r['uq2_over_int4']:.2f}× |")
        lines += [""]
    if data.get("overhead"):
        lines += ["## Fixed cost at one token, 1536×384 (µs)", "",
                  "| method | dense fp32 | compiled kernel | `bqq_linear` | `QuantizedLinear` |",
                  "|---|---|---|---|---|"]
        for r in data["overhead"]:
            lines.append(f"| {r['method']} | {r['dense_us']:.1f} | {r['kernel_us']:.1f} | {r['bqq_linear_us']:.1f} | "
                         f"{r['module_us']:.1f} |")
        lines += [""]
    if data.get("sweep"):
        lines += ["## Paths by token count (ms)", "",
                  "| weight | tokens | BQQ table | BQQ exact | UQ table | UQ exact | UQ rebuild | fastest BQQ / UQ |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in data["sweep"]:
            lines.append(f"| {r['shape']} | {r['tokens']} | {r['bqq_table_s'] * 1e3:.3f} | "
                         f"{r['bqq_exact_s'] * 1e3:.3f} | "
                         f"{r['uq_table_s'] * 1e3:.3f} | {r['uq_exact_s'] * 1e3:.3f} | {r['uq_rebuild_s'] * 1e3:.3f} | "
                         f"{r['bqq_fastest']} / {r['uq_fastest']} |")
        from bqq_kernels.cpu import linear

        now = {"bqq_table_below": linear.BQQ_TABLE_BELOW, "uq_table_below": linear.PLANE_TABLE_BELOW}
        lines += ["", f"Suggested switch points: {data['switches']}; in use during the sweep: "
                  f"{data['switches_in_use']}; in `kernels/cpu/linear.py` now: {now}.", ""]
    if data.get("accuracy"):
        acc = data["accuracy"]
        lines += ["## Accuracy of the table path (real weights)", "",
                  "| model | row | layer error median | layer error max | perplexity exact | perplexity table "
                  "| change |",
                  "|---|---|---|---|---|---|---|"]
        for r in acc["llm"]:
            lines.append(f"| tiny Llama | {r['row']} | {r['layer_error_median']:.1e} | {r['layer_error_max']:.1e} | "
                         f"{r['ppl_numba-exact']:.4f} | {r['ppl_numba-table']:.4f} | {r['ppl_relative_change']:+.2e} |")
        lines += ["", "| model | row | top-1 exact | top-1 table |", "|---|---|---|---|"]
        for r in acc["vit"]:
            lines.append(f"| Fashion ViT | {r['row']} | {r['top1_numba-exact']:.2f} | {r['top1_numba-table']:.2f} |")
        lines += [""]
    if data.get("generate"):
        lines += ["## generate() at batch 1 (random init; decode tokens/s after a 128-token prompt)", "",
                  "| model | row | tokens/s | × fp32 | × torch int4 | prefill 512 s | prefill × fp32 | peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in data["generate"]:
            ratio = lambda value: "–" if value is None else f"{value:.2f}×"  # noqa: E731
            lines.append(f"| {r['shape']} | {r['row']} | {r['tokens_per_s']:.2f} | {ratio(r['speedup_fp32'])} | "
                         f"{ratio(r['speedup_int4'])} | {r['prefill_s']:.2f} | {ratio(r['prefill_ratio'])} | "
                         f"{r['peak_rss_mb']:.0f} |")
        lines += [""]
    if data.get("deit"):
        lines += ["## DeiT-S latency (random init, 2-bit)", "", "| batch | fp32 ms | BQQ | UQ | BCQ | auto |",
                  "|---|---|---|---|---|---|"]
        for r in data["deit"]:
            lines.append(f"| {r['batch']} | {r['fp32_s'] * 1e3:.1f} | {r['bqq_s'] / r['fp32_s']:.2f}× | "
                         f"{r['uq_s'] / r['fp32_s']:.2f}× | {r['bcq_s'] / r['fp32_s']:.2f}× | "
                         f"{r['auto_s'] / r['fp32_s']:.2f}× |")
        lines += [""]
    lines += ["## Targets", ""] + [f"- {line}" for line in check_targets(data)]
    return "\n".join(lines) + "\n"


def check_targets(data: dict) -> list[str]:
    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    out = []
    for r in data.get("layers", []):
        big = r["shape"] != "1536x384"
        for k, label in (("bqq2", "2* BQQ"), ("uq2", "2-bit UQ")):
            ratio = r[f"{k}_ratio"]
            if big and r["tokens"] == 1:
                out.append(f"{r['shape']}, 1 token, {label}: {ratio:.3f}× dense (≤ {TARGETS['one_token_dense']}) "
                           f"{verdict(ratio <= TARGETS['one_token_dense'])}; {r[f'{k}_over_int4']:.2f}× int4 "
                           f"(≤ {TARGETS['one_token_int4']}) "
                           f"{verdict(r[f'{k}_over_int4'] <= TARGETS['one_token_int4'])}")
            elif big and r["tokens"] == 8:
                out.append(f"{r['shape']}, 8 tokens, {label}: {ratio:.3f}× dense (≤ {TARGETS['eight_tokens_dense']}) "
                           f"{verdict(ratio <= TARGETS['eight_tokens_dense'])}")
            elif not big and r["tokens"] == 1:
                out.append(f"1536x384, 1 token, {label}: {ratio:.3f}× dense (≤ {TARGETS['small_layer']}) "
                           f"{verdict(ratio <= TARGETS['small_layer'])}")
        if r["tokens"] >= 197:
            worst = max(r["bqq2_ratio"], r["uq2_ratio"], r["uq3_ratio"])
            out.append(f"{r['shape']}, {r['tokens']} tokens, slowest bqq method {worst:.2f}× dense (≤ 1.0) "
                       f"{verdict(worst <= TARGETS['prefill_dense'])}")
    for r in data.get("generate", []):
        if r["row"] in ("bqq-2*", "uq-2") and r["speedup_fp32"] is not None:
            goal = TARGETS["tiny_fp32"] if r["shape"].startswith("tiny") else TARGETS["llama7b_fp32"]
            line = f"{r['shape']} {r['row']} generate(): {r['speedup_fp32']:.2f}× fp32 tokens/s (≥ {goal}) " \
                   f"{verdict(r['speedup_fp32'] >= goal)}"
            if r["shape"].startswith("tiny") and r["speedup_int4"]:
                line += f"; {r['speedup_int4']:.2f}× torch int4 (≥ {TARGETS['tiny_int4']}) " \
                        f"{verdict(r['speedup_int4'] >= TARGETS['tiny_int4'])}"
            out.append(line)
    for r in data.get("deit", []):
        if r["batch"] == 1:
            for k in ("bqq", "uq", "auto"):
                ratio = r[f"{k}_s"] / r["fp32_s"]
                out.append(f"DeiT-S batch 1, {k}: {ratio:.2f}× fp32 latency (≤ {TARGETS['deit_batch1']}) "
                           f"{verdict(ratio <= TARGETS['deit_batch1'])}")
    for r in (data.get("accuracy") or {}).get("llm", []):
        change = abs(r["ppl_relative_change"])
        out.append(f"tiny Llama {r['row']}: perplexity table/exact − 1 = {r['ppl_relative_change']:+.2e} "
                   f"(|·| ≤ {TARGETS['perplexity']}) {verdict(change <= TARGETS['perplexity'])}; layer error max "
                   f"{r['layer_error_max']:.1e} (≤ {TARGETS['layer_error']}) "
                   f"{verdict(r['layer_error_max'] <= TARGETS['layer_error'])}")
    return out


def environment() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from bqq_kernels.cpu.simd import host_shuffle

    return {"cpu": cpu, "threads": torch.get_num_threads(), "numba_threads": numba.get_num_threads(),
            "shuffle": host_shuffle(), "torch": torch.__version__, "numba": numba.__version__, "bqq": bqq.__version__,
            "python": platform.python_version()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=PARTS, choices=PARTS)
    p.add_argument("--quick", action="store_true", help="small shapes and few tokens (a smoke run)")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--llm", nargs="+", default=["tinyllama-1.1b", "llama2-7b-4blocks"], choices=list(LLM_SHAPES))
    p.add_argument("--llm-rows", nargs="+", default=LLM_ROWS, choices=LLM_ROWS,
                   help="generate() rows to run (the others keep their last results)")
    p.add_argument("--one-llm", nargs=2, metavar=("SHAPE", "ROW"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.one_llm:
        print(json.dumps(generate_row(*args.one_llm, args.new_tokens, args.prompt, args.prefill)))
        return {}
    from bqq_kernels.cpu import linear

    start = time.perf_counter()
    suffix = "_quick" if args.quick else ""
    command = "python -m benchmarks.inference " + " ".join(argv if argv is not None else sys.argv[1:])
    previous = args.out / f"inference{suffix}.json"
    # Parts not run now keep their last results (each part records the command and date that made it).
    data: dict = json.loads(previous.read_text()) if previous.exists() else {}
    data.update({"command": command.strip(), "date": time.strftime("%Y-%m-%d"), "env": environment()})
    made_by = data.setdefault("made_by", {})
    for part in args.parts:
        how = f"`{command.strip()}` ({data['date']})"
        if part == "generate" and set(args.llm_rows) != set(LLM_ROWS) and made_by.get(part):
            how = f"{made_by[part]}, rows {', '.join(args.llm_rows)} by {how}"  # the other rows are kept
        made_by[part] = how
    shapes = [(256, 256), (384, 1536)] if args.quick else SHAPES
    tokens = [1, 8, 40] if args.quick else TOKENS
    if "layers" in args.parts:
        data["layers"] = layer_rows(shapes, tokens, args.repeats)
    if "overhead" in args.parts:
        data["overhead"] = overhead_rows(args.repeats)
    if "sweep" in args.parts:
        data["sweep"] = sweep_rows(shapes[:1] + shapes[-1:], [1, 8, 64] if args.quick else SWEEP_TOKENS, args.repeats)
        data["switches"] = suggested_switches(data["sweep"])
        data["switches_in_use"] = {"bqq_table_below": linear.BQQ_TABLE_BELOW,
                                   "uq_table_below": linear.PLANE_TABLE_BELOW}
    if "accuracy" in args.parts:
        data["accuracy"] = accuracy_rows(args.quick)
    if "generate" in args.parts:
        fresh = generate_rows(["quick"] if args.quick else args.llm, args.llm_rows, args.new_tokens, args.prompt,
                              args.prefill)
        kept = [r for r in data.get("generate", []) if (r["shape"], r["row"]) not in {(f["shape"], f["row"])
                                                                                      for f in fresh}]
        data["generate"] = sorted(kept + fresh, key=lambda r: (list(LLM_SHAPES).index(r["shape"]),
                                                               LLM_ROWS.index(r["row"])))
        relative_speeds(data["generate"])
    if "deit" in args.parts:
        from benchmarks.kernels import model_rows

        data["deit"] = model_rows([1, 8], max(3, args.repeats // 2))
    data["wall_s"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"inference{suffix}.json").write_text(json.dumps(data, indent=1))
    text = markdown(data)
    (args.out / f"inference{suffix}.md").write_text(text)
    print(text)
    return data


if __name__ == "__main__":
    main()
