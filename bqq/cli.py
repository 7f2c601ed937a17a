"""Command line: ``bqq demo``, ``bqq compress``, ``bqq info``; for Hugging Face causal LMs ``bqq quantize`` and
``bqq eval-ppl``."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import api, io
from .format import FormatError, read_file
from .methods import available_methods, bits_meanings
from .ptq.report import format_candidates
from .ptq.serialize import CONFIG_KEY as MODEL_CONFIG_KEY

_LM_SOURCES = ("wikitext2",)  # bqq.lm.SOURCES, named here so that --help does not import bqq.lm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bqq", description="Binary Quadratic Quantization of matrices.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="compress built-in test matrices with every method and print the errors")
    demo.add_argument("--size", type=int, default=256, help="side of the square test matrices (default 256)")
    demo.add_argument("--bits", type=int, default=2)

    meanings = "\n".join(f"  {name:<6} {text}" for name, text in bits_meanings().items())
    comp = sub.add_parser("compress", help="compress a matrix from .npy or .safetensors[:tensor]",
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog=f"what --bits means, per method:\n{meanings}")
    comp.add_argument("input", help="IN.npy, IN.safetensors, or IN.safetensors:TENSOR_NAME")
    comp.add_argument("-o", "--output", required=True, type=Path, help="output .safetensors file")
    comp.add_argument("--bits", type=float, default=2, help="per method, see below (BQQ: stacks p)")
    comp.add_argument("--method", default="bqq", choices=available_methods())
    comp.add_argument("--group-size", type=_group_size, default=None, help="N or RxC (default: whole matrix)")
    comp.add_argument("--rank-scale", type=float, default=None, help="BQQ inner dimension factor (default 1)")
    comp.add_argument("--seed", type=int, default=0)
    comp.add_argument("--sweeps", type=int, default=None, help="BQQ annealing sweeps per stack (default: auto)")
    comp.add_argument("--force", action="store_true", help="overwrite OUTPUT even if it holds other work")

    info = sub.add_parser("info", help="describe a bqq .safetensors file")
    info.add_argument("file", type=Path)

    quant = sub.add_parser("quantize", help="quantize a Hugging Face causal LM directory into a save_pretrained "
                           "directory (needs transformers)", formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="Interrupted (Ctrl-C, kill -9)? Run the same command again: finished groups are "
                           "kept in the cache folder\nand the result is bit-identical to an uninterrupted run.\n\n"
                           f"what --bits means, per method:\n{meanings}")
    quant.add_argument("model_dir", type=Path, help="local directory of a transformers model (config.json, weights)")
    quant.add_argument("-o", "--output", required=True, type=Path, help="output directory (from_pretrained-loadable)")
    quant.add_argument("--bits", type=float, default=2, help="per method, see below (default 2)")
    quant.add_argument("--method", default="auto", choices=["auto", *available_methods()],
                       help="auto (default): per layer the best of BQQ, UQ, BCQ (and GPTQ with --calib)")
    quant.add_argument("--group-size", type=_model_group_size, default="paper",
                       help="N, RxC, 'none' (one group per layer) or 'paper' (default: squares of the model "
                            "width, 100x96 for a classifier head; LLMs (text generators, or models at least 1024 "
                            "wide) get 256x256 tiles and a shorter BQQ schedule, chosen by measurement: "
                            "docs/llm.md)")
    quant.add_argument("--calib", default=None, help="calibration text: 'wikitext2' (its train split) or a text "
                       "file; default: data-free")
    quant.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    quant.add_argument("--seqlen", type=int, default=2048, help="tokens per calibration window (default 2048)")
    quant.add_argument("--device", default=None, help="cpu or cuda (default: where the model loads, the CPU)")
    quant.add_argument("--cache-dir", type=Path, default=None, help="finished groups, for resuming (default: "
                       "OUT_DIR/.bqq-cache, removed after success; a given folder is kept)")
    quant.add_argument("--seed", type=int, default=0)
    quant.add_argument("--sweeps", type=int, default=None, help="BQQ annealing sweeps per stack (default: from the "
                       "group shape; LLMs: 250 plain, 50 output-aware per 256x256 group)")
    quant.add_argument("--rank-scale", type=float, default=None, help="BQQ inner dimension factor (default 1)")

    ppl = sub.add_parser("eval-ppl", help="perplexity of a Hugging Face causal LM directory, quantized or not "
                         "(needs transformers)")
    ppl.add_argument("model_dir", type=Path)
    source = ppl.add_mutually_exclusive_group()
    source.add_argument("--text", type=Path, default=None, help="a local UTF-8 text file")
    source.add_argument("--dataset", default=None, choices=list(_LM_SOURCES),
                        help="a dataset's test split (default: wikitext2)")
    ppl.add_argument("--seqlen", type=int, default=2048, help="window length (default 2048)")
    ppl.add_argument("--device", default=None, help="cpu or cuda (default: where the model loads, the CPU)")

    args = parser.parse_args(argv)
    try:
        return {"demo": _demo, "compress": _compress, "info": _info, "quantize": _quantize_model,
                "eval-ppl": _eval_ppl}[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, KeyError, ImportError) as exc:
        print(f"bqq {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _group_size(text: str) -> int | tuple[int, int]:
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"group size must be N or RxC, got {text!r}") from None
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise argparse.ArgumentTypeError(f"group size must be N or RxC, got {text!r}")


def _model_group_size(text: str) -> int | tuple[int, int] | str | None:
    if text.lower() == "paper":
        return "paper"
    if text.lower() == "none":
        return None
    return _group_size(text)


def load_matrix(spec: str) -> torch.Tensor:
    """A 2-D tensor from ``X.npy``, ``X.safetensors`` (one tensor) or ``X.safetensors:NAME``."""
    path, _, name = spec.partition(".safetensors:")
    if name:
        path += ".safetensors"
    path_obj = Path(path)
    if not path_obj.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path_obj.suffix == ".npy":
        return torch.from_numpy(np.load(path_obj, allow_pickle=False))
    if path_obj.suffix != ".safetensors":
        raise ValueError(f"input must be .npy or .safetensors[:tensor], got {spec!r}")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            names = list(f.keys())
            if not name:
                if len(names) != 1:
                    raise ValueError(f"{path} holds {len(names)} tensors; pick one as {path}:NAME from "
                                     f"{names[:20]}{' ...' if len(names) > 20 else ''}")
                name = names[0]
            if name not in names:
                raise KeyError(f"no tensor {name!r} in {path}")
            return f.get_tensor(name)
    except SafetensorError as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc


def _compress(args: argparse.Namespace) -> int:
    w = load_matrix(args.input)
    source_sha = hashlib.sha256(np.ascontiguousarray(w.float().numpy()).tobytes()).hexdigest()
    opts = {k: v for k, v in (("sweeps", args.sweeps), ("rank_scale", args.rank_scale)) if v is not None}
    if args.method != "bqq" and opts:
        raise ValueError(f"--{next(iter(opts)).replace('_', '-')} applies to --method bqq only")
    bits = int(args.bits) if float(args.bits).is_integer() else args.bits
    api.method_config(args.method, bits, opts)
    settings = dict(method=args.method, group_size=args.group_size, seed=args.seed, **opts)
    job = {"source_sha256": source_sha, "settings": repr(sorted(settings.items()))}
    start = time.perf_counter()
    if args.method == "bqq":
        q = _compress_bqq_resumable(w, bits, settings, job, args)
    else:
        _refuse_overwrite(args.output, job, args.force)
        q = api.compress(w, bits, progress=True, **settings)
        io.save(q, args.output, metadata=job)
    seconds = time.perf_counter() - start
    err = ((q.dequantize().double() - w.double()) ** 2).mean().item()
    rel = err / max((w.double() ** 2).mean().item(), 1e-300)
    print(f"{args.output}: {q.method} {q.shape[0]}x{q.shape[1]} bits={q.bits} "
          f"bits/weight={q.bits_per_weight:.4f} bytes={q.nbytes} mse={err:.6g} rel_mse={rel:.6g} "
          f"seconds={seconds:.2f}")
    return 0


def _compress_bqq_resumable(w, bits, settings, job, args):
    """BQQ stack by stack, saving after each, so an interrupted run resumes where it stopped."""
    q = None
    if args.output.exists() and not args.force:
        if io.read_metadata(args.output) != job:
            raise ValueError(f"{args.output} exists and holds other work; pass --force to overwrite it")
        q = io.load(args.output)
        if q.stacks > bits:
            raise ValueError(f"{args.output} already has {q.stacks} stacks > --bits {bits}; pass --force")
        print(f"resuming {args.output}: {q.stacks} of {bits} stacks done", file=sys.stderr)
    if q is None:
        q = api.compress(w, 1, progress=True, **settings)
        io.save(q, args.output, metadata=job)
    while q.stacks < bits:
        q.extend(1, w=w, progress=True)
        io.save(q, args.output, metadata=job)
    return q


def _refuse_overwrite(path: Path, job: dict, force: bool) -> None:
    if path.exists() and not force:
        try:
            same = io.read_metadata(path) == job
        except FormatError:
            same = False
        if not same:
            raise ValueError(f"{path} exists and holds other work; pass --force to overwrite it")


def _info(args: argparse.Namespace) -> int:
    _, manifest, metadata = read_file(args.file)
    objects = io.load(args.file)
    if not isinstance(objects, dict):
        objects = {io.SINGLE_NAME: objects}
    print(f"{args.file}: format {metadata['format']} v{metadata['format_version']}, written by bqq "
          f"{metadata['library_version']}, bit order {metadata['bit_order']}, {args.file.stat().st_size} bytes")
    for name, q in objects.items():
        print(f"  {name}: {q.method} shape={q.shape[0]}x{q.shape[1]} dtype={q.dtype} bits={q.bits} "
              f"group={q.group_shape[0]}x{q.group_shape[1]} groups={len(q.grid)} "
              f"bits/weight={q.bits_per_weight:.4f} bytes={q.nbytes}")
    for method in sorted({q.method for q in objects.values()}):
        print(f"  bits for {method}: {bits_meanings()[method]}")
    user = dict(manifest.get("user", {}))
    model_config = user.pop(MODEL_CONFIG_KEY, None)
    if model_config is not None:
        _print_selection(json.loads(model_config))
    for key, value in user.items():
        print(f"  user.{key} = {value}")
    return 0


def _print_selection(config: dict) -> None:
    """The QuantizeConfig of a saved model and what bqq.quantize measured per layer (relative errors, candidates)."""
    print(f"  model {config.get('model_name')} (model config v{config.get('format_version')}):")
    if config.get("quantize_config") is not None:
        print(f"    quantize_config: {json.dumps(config['quantize_config'], sort_keys=True)}")
    for name, layer in config.get("layers", {}).items():
        selection = layer.get("selection") or {}
        error = selection.get("rel_error")
        others = format_candidates(selection.get("candidates", {}))
        shared = layer.get("shared_with") or []
        print(f"    {name}: {layer.get('method')} rel_error={'?' if error is None else f'{error:.4f}'}"
              + (f" (candidates: {others})" if others else "")
              + (f" (weight shared with {', '.join(shared)})" if shared else ""))
    coverage = config.get("coverage")
    if coverage:
        print(f"  coverage: {coverage['quantized_params']:,} of {coverage['total_params']:,} parameters quantized "
              f"({100 * coverage['quantized_fraction']:.1f} %), {coverage['bits_per_weight']:.3f} bits per quantized "
              f"weight, {coverage['model_bits_per_param']:.3f} bits per parameter over the whole model "
              "(FP leftovers at their dtype)")
    for name, reason in (config.get("left_fp") or {}).items():
        print(f"    left FP: {name}: {reason}")


def _quantize_model(args: argparse.Namespace) -> int:
    """``bqq quantize``: load MODEL_DIR offline, quantize (resumable through the cache folder), save_pretrained."""
    from . import hf
    from .config import LayerConfig, QuantizeConfig, RunConfig
    from .ptq.quantize import quantize
    from .ptq.report import coverage_report

    hf.require_transformers()
    source, out = args.model_dir, args.output
    if out.resolve() == source.resolve():
        raise ValueError("the output directory must differ from MODEL_DIR")
    opts = {k: v for k, v in (("sweeps", args.sweeps), ("rank_scale", args.rank_scale)) if v is not None}
    if opts and args.method not in ("bqq", "auto"):
        raise ValueError(f"--{next(iter(opts)).replace('_', '-')} applies to --method bqq/auto only")
    bits = int(args.bits) if float(args.bits).is_integer() else args.bits
    start = time.perf_counter()
    model = hf.from_pretrained(source)
    if getattr(model, "hf_quantizer", None) is not None:
        raise ValueError(f"{source} is quantized already ({model.config.quantization_config.quant_method})")
    tokenizer = _tokenizer(source, required=args.calib is not None)
    calibration = None
    if args.calib is not None:
        from . import lm

        tokens = _load_tokens(lm, args.calib, tokenizer, split="train")
        calibration = lm.calibration_batches(tokens, args.nsamples, args.seqlen, seed=args.seed)
    if args.device is not None:
        model.to(args.device)
    cache = args.cache_dir if args.cache_dir is not None else out / ".bqq-cache"
    try:
        config = QuantizeConfig(LayerConfig(args.method, bits, args.group_size, opts), seed=args.seed)
        quantize(model, config, calibration=calibration,
                 run=RunConfig(cache_dir=cache, progress=True, device=args.device))
    except KeyboardInterrupt:
        print(f"\nbqq quantize: interrupted; run the same command again to resume from {cache}", file=sys.stderr)
        return 130
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    if args.cache_dir is None:
        shutil.rmtree(cache, ignore_errors=True)  # the default cache is only for resuming this run
    coverage = coverage_report(model)
    methods = {}
    for row in coverage["quantized"]:
        methods[row["method"]] = methods.get(row["method"], 0) + 1
    print(f"{out}: {len(coverage['quantized'])} layers quantized ("
          + ", ".join(f"{m} {n}" for m, n in sorted(methods.items()))
          + f"), {coverage['bits_per_weight']:.3f} bits per quantized weight, "
          f"{100 * coverage['quantized_fraction']:.1f} % of the parameters, "
          f"seconds={time.perf_counter() - start:.1f}")
    return 0


def _eval_ppl(args: argparse.Namespace) -> int:
    """``bqq eval-ppl``: perplexity over non-overlapping windows of a text (bqq.lm.perplexity)."""
    from . import hf, lm

    hf.require_transformers()
    model = hf.from_pretrained(args.model_dir)
    tokenizer = _tokenizer(args.model_dir, required=True)
    source = str(args.text) if args.text is not None else (args.dataset or lm.WIKITEXT2)
    tokens = _load_tokens(lm, source, tokenizer, split="test")
    if args.device is not None:
        model.to(args.device)
    value = lm.perplexity(model, tokens, seqlen=args.seqlen, device=args.device, progress=True)
    print(f"{args.model_dir}: perplexity {value:.4f} on {source} ({tokens.shape[1]} tokens, "
          f"{tokens.shape[1] // args.seqlen} windows of {args.seqlen})")
    return 0


def _tokenizer(directory: Path, *, required: bool):
    """The tokenizer saved in ``directory`` (offline), or None when absent and not ``required``."""
    from .hf import require_transformers

    try:
        return require_transformers().AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as exc:
        if required:
            raise ValueError(f"{directory}: no usable tokenizer ({exc})") from exc
        print(f"bqq: {directory} has no tokenizer; the output will have none ({exc})", file=sys.stderr)
        return None


def _load_tokens(lm, source: str, tokenizer, *, split: str) -> torch.Tensor:
    try:
        return lm.load_tokens(source, tokenizer, split=split)
    except RuntimeError as exc:  # a dataset that is not available offline: a user error, said in one line
        raise ValueError(str(exc)) from exc


def _demo(args: argparse.Namespace) -> int:
    """Compress a Gaussian and a low-rank-plus-noise matrix with every method at the same bits."""
    rng = np.random.default_rng(0)
    n = args.size
    gaussian = rng.standard_normal((n, n))
    low_rank = rng.standard_normal((n, 8)) @ rng.standard_normal((8, n)) + 0.3 * rng.standard_normal((n, n))
    print(f"bqq demo: {n}x{n} matrices standardized to unit variance, {args.bits} bits per weight")
    print(f"{'matrix':<16}{'method':<8}{'mse':>10}{'bits/weight':>13}{'KB':>9}{'seconds':>9}")
    for label, w in (("gaussian", gaussian), ("low-rank+noise", low_rank)):
        w = (w - w.mean()) / w.std()
        for method in ("bqq", "bcq", "uq", "svd"):
            start = time.perf_counter()
            q = api.compress(torch.from_numpy(w).float(), args.bits, method=method)
            seconds = time.perf_counter() - start
            err = ((q.dequantize().double().numpy() - w) ** 2).mean()
            print(f"{label:<16}{method:<8}{err:>10.4f}{q.bits_per_weight:>13.4f}{q.nbytes / 1000:>9.1f}"
                  f"{seconds:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
