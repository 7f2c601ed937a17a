"""Train the small Llama-architecture LM that the LLM benchmark and tests quantize (no pretrained LLM is
available offline).

    python -m benchmarks.train_tiny_llama [--text FILE] [--steps 300 | --minutes 10] [--threads 2] [--out DIR]

Text: by default the Python reference documentation that ships with every Python
(``pydoc_data.topics.topics``, a dict of help texts, about 0.47 MB of English with code in Python 3.11),
the texts joined by ``"\\n\\n"`` in sorted key order; ``--text FILE`` takes any local UTF-8 text instead.
The last 10 % of the characters (cut at a line break) is the held-out test split, never seen in training;
the rest trains the tokenizer and the model and is where calibration windows come from. Both are written
beside the model as ``train.txt`` and ``test.txt``, so the model directory is self-contained (another
Python's ``pydoc_data`` holds other text).

Tokenizer: byte-level BPE (``tokenizers``, vocabulary ``--vocab`` 1024 including the one special token
``<|endoftext|>``, used as BOS/EOS but never inserted into the stream) trained on the training split, saved
so that ``transformers.AutoTokenizer.from_pretrained(DIR)`` loads it as a ``PreTrainedTokenizerFast``.

Model: ``transformers.LlamaForCausalLM``, hidden 256, 4 layers, 4 attention heads of 64 and 2 KV heads
(grouped-query attention, k/v projections 128×256), SwiGLU MLP of 640 (a multiple of 128, so GPTQ's
128-column groups tile every layer exactly), RMSNorm, RoPE, context 256, input and output embeddings tied:
3,016,960 parameters (2,752,512 in the 28 linear layers, 262,144 in the tied embedding, 2,304 in norms).

Training: CPU, ``--threads`` 2, fp32, deterministic (``torch.manual_seed``, deterministic algorithms, a
seeded generator for the batches): batches of 8 windows of 257 tokens at random offsets of the training
stream (256 predicted tokens each), AdamW (betas 0.9/0.95, weight decay 0.1 on matrices, gradients clipped
at 1.0), peak learning rate 2e-3 after 5 % linear warm-up, cosine decay to 10 % of it. ``--steps`` fixes the
run (reproducible); ``--minutes`` instead sets the number of steps from the speed of the first steps (not
reproducible across machines). The held-out perplexity (:func:`bqq.lm.perplexity`, non-overlapping windows of
256 tokens) is printed every ``--eval-every`` steps for information (nothing is selected on it) and at the end.

Output (``--out``, default ``benchmarks/models/tiny-llama``): ``save_pretrained``'s ``config.json``,
``generation_config.json`` and ``model.safetensors``, the tokenizer files, ``train.txt``, ``test.txt`` and
``training.json`` (settings, losses, final perplexity, versions). The weights are stored in bfloat16 to halve
the file (6 MB instead of 12 MB); ``config.json`` keeps ``dtype: float32``, so
``AutoModelForCausalLM.from_pretrained(DIR)`` gives an fp32 model holding exactly the stored values. The
reported perplexity is measured on those bf16-rounded weights, i.e. on the model as it loads.

Committed model: ``python -m benchmarks.train_tiny_llama --threads 1`` (the defaults, 300 steps, 614,400
training tokens, about 4 passes over the 147,514 training tokens; one thread because this shared 2-core machine
ran two threads slower than one), 1214 s on the CPU. Held-out perplexity 69.01 (test.txt, 16,407 tokens, 64
windows of 256; 69.007 with the fp32 weights before bf16 rounding); it was still falling (136.2 at step 100,
85.8 at 200), so more ``--steps`` give a stronger model at proportionally more time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import bqq
from bqq.compat import import_transformers
from bqq.lm import perplexity

DEFAULT_OUT = Path(__file__).resolve().parent / "models" / "tiny-llama"
SPECIAL = "<|endoftext|>"
TEST_FRACTION = 0.1
# Architecture: see the module docstring for why each number.
ARCH = {"hidden_size": 256, "intermediate_size": 640, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True}


def pydoc_text() -> str:
    """Python's reference documentation topics, joined by blank lines in sorted key order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def split_text(text: str, test_fraction: float = TEST_FRACTION) -> tuple[str, str]:
    """(train, test): the test split is the last ``test_fraction`` of the characters, starting after a line
    break so that no line is cut in two."""
    cut = int(len(text) * (1 - test_fraction))
    newline = text.find("\n", cut)
    if newline < 0 or newline >= len(text) - 1:
        raise SystemExit("the text is too short or has no line break in its last part to cut a test split at")
    return text[:newline], text[newline + 1:]


def train_tokenizer(text: str, vocab: int):
    """A byte-level BPE of ``vocab`` tokens trained on ``text``, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    transformers = import_transformers()
    tokenizer = Tokenizer(models.BPE())
    # add_prefix_space=False: the stream is one long text, so the first word is not special.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[SPECIAL], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=SPECIAL, eos_token=SPECIAL,
                                                model_max_length=ARCH["max_position_embeddings"])


def build_model(vocab: int, special_id: int):
    """A randomly initialized ``LlamaForCausalLM`` of :data:`ARCH` (seeded by the caller)."""
    transformers = import_transformers()
    config = transformers.LlamaConfig(vocab_size=vocab, bos_token_id=special_id, eos_token_id=special_id,
                                      **ARCH)
    return transformers.LlamaForCausalLM(config)


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to 10 % of it at ``steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_windows(tokens: torch.Tensor, batch: int, seqlen: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, seqlen + 1) windows of the (N,) stream ``tokens`` at random offsets."""
    starts = torch.randint(0, tokens.numel() - seqlen - 1, (batch,), generator=generator)
    return torch.stack([tokens[s:s + seqlen + 1] for s in starts.tolist()])


def save_bf16_weights(path: Path) -> None:
    """Rewrite ``model.safetensors`` with bfloat16 tensors (same names and metadata)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()}, str(path),
              metadata=metadata)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", type=Path, help="local UTF-8 text to train on (default: pydoc_data topics)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model directory to write")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300, reproducible)")
    budget.add_argument("--minutes", type=float, help="wall-time budget; sets the steps from the first steps' speed")
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=100)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    transformers = import_transformers()
    text = args.text.read_text(encoding="utf-8") if args.text else pydoc_text()
    source = str(args.text) if args.text else f"pydoc_data.topics (Python {platform.python_version()})"
    train_text, test_text = split_text(text)
    tokenizer = train_tokenizer(train_text, args.vocab)
    train_ids = tokenizer(train_text, return_tensors="pt", verbose=False).input_ids[0]
    test_ids = tokenizer(test_text, return_tensors="pt", verbose=False).input_ids
    print(f"{source}: {len(text):,} characters; train {len(train_text):,} chars / {train_ids.numel():,} tokens, "
          f"test {len(test_text):,} chars / {test_ids.shape[1]:,} tokens; vocabulary {len(tokenizer)}", flush=True)

    special = tokenizer.convert_tokens_to_ids(SPECIAL)
    model = build_model(len(tokenizer), special)
    params = sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)
                 and m is not model.get_output_embeddings())
    print(f"LlamaForCausalLM {ARCH}: {params:,} parameters ({linear:,} in linear layers besides lm_head)",
          flush=True)

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(args.seed)
    steps = args.steps
    log = []
    start = time.perf_counter()
    model.train()
    step = 0
    while step < steps:
        warmup = max(1, steps // 20)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, args.lr, warmup)
        x = batch_windows(train_ids, args.batch, args.seqlen, generator)
        logits = model(input_ids=x[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if args.minutes is not None and step == 5:
            # the first steps include warm-up costs, so this errs towards fewer steps
            per_step = (time.perf_counter() - start) / step
            steps = max(step + 1, int(args.minutes * 60 / per_step))
            print(f"{per_step:.2f} s per step: {steps} steps in {args.minutes} minutes", flush=True)
        entry = {"step": step, "loss": loss.item(), "seconds": time.perf_counter() - start}
        if step % args.eval_every == 0 or step == steps:
            entry["test_ppl"] = perplexity(model, test_ids, seqlen=args.seqlen, progress=False)
            model.train()
        log.append(entry)
        if step % 10 == 0 or "test_ppl" in entry:
            extra = f"  test ppl {entry['test_ppl']:.2f}" if "test_ppl" in entry else ""
            print(f"step {step}/{steps}  loss {entry['loss']:.4f}  lr {optimizer.param_groups[0]['lr']:.2e}  "
                  f"{entry['seconds']:.0f} s{extra}", flush=True)
    seconds = time.perf_counter() - start
    fp32_ppl = log[-1]["test_ppl"]

    # Stored in bf16 (see the docstring): evaluate the rounded weights, which is what loads.
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.to(torch.bfloat16).float())
    model.eval()
    ppl = perplexity(model, test_ids, seqlen=args.seqlen, progress=False)
    print(f"trained {steps} steps ({steps * args.batch * args.seqlen:,} tokens) in {seconds:.0f} s; held-out "
          f"perplexity {fp32_ppl:.3f} (fp32), {ppl:.3f} (bf16-rounded weights, as stored)", flush=True)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = special
    model.save_pretrained(out)
    save_bf16_weights(out / "model.safetensors")
    tokenizer.save_pretrained(out)
    tokenizer_config = out / "tokenizer_config.json"
    config = json.loads(tokenizer_config.read_text())
    # transformers 5 writes its own class name; "PreTrainedTokenizerFast" also loads in transformers 4.x.
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tokenizer_config.write_text(json.dumps(config, indent=2) + "\n")
    (out / "train.txt").write_text(train_text, encoding="utf-8")
    (out / "test.txt").write_text(test_text, encoding="utf-8")
    command = " ".join(["python -m benchmarks.train_tiny_llama", *(sys.argv[1:] if argv is None else argv)])
    summary = {
        "command": command, "date": datetime.date.today().isoformat(), "source": source,
        "characters": {"train": len(train_text), "test": len(test_text)},
        "tokens": {"train": train_ids.numel(), "test": test_ids.shape[1]},
        "architecture": {"vocab_size": len(tokenizer), **ARCH}, "parameters": params, "linear_parameters": linear,
        "training": {"steps": steps, "batch": args.batch, "seqlen": args.seqlen, "lr": args.lr, "seed": args.seed,
                     "threads": args.threads, "seconds": round(seconds, 1),
                     "tokens_seen": steps * args.batch * args.seqlen},
        "test_perplexity": {"fp32": fp32_ppl, "stored_bf16": ppl, "seqlen": args.seqlen},
        "weights_dtype": "bfloat16 (loads as float32)",
        "env": {"bqq": bqq.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                "python": platform.python_version()},
        "log": [{k: round(v, 4) if isinstance(v, float) else v for k, v in e.items()} for e in log
                if e["step"] % 10 == 0 or "test_ppl" in e],
    }
    (out / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {out}", flush=True)
    return summary


if __name__ == "__main__":
    main()
