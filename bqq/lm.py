"""Language-model evaluation with the GPTQ-lineage conventions: token streams, calibration windows, perplexity.

    tokens = bqq.lm.load_tokens("wikitext2", tokenizer)             # (1, N), WikiText-2 raw test split
    tokens = bqq.lm.load_tokens("corpus.txt", tokenizer)            # (1, N), any local UTF-8 text
    batches = bqq.lm.calibration_batches(train_tokens, nsamples=128, seqlen=2048)
    bqq.quantize(model, bits=2, method="bqq", calibration=bqq.Calibration(batches))
    bqq.lm.perplexity(model, tokens, seqlen=2048)                    # float

The conventions are those of the GPTQ reference code and the papers that report against it (GPTQ, AWQ,
QuIP, BQQ's LLM tables): the whole split is tokenized as one stream (WikiText-2's lines joined by
``"\\n\\n"``); perplexity is taken over consecutive non-overlapping windows of ``seqlen`` tokens, each window
scored alone (no context carried over, the trailing partial window dropped); calibration uses ``nsamples``
windows of ``seqlen`` tokens at random offsets of the training stream. Numbers computed this way can be
compared with published tables only at the same tokenizer, ``seqlen`` and split.

This module imports neither ``transformers`` nor ``datasets`` at import time: the model and tokenizer are
passed in, and ``datasets`` is imported only for ``source="wikitext2"``.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .common import progress_bar

WIKITEXT2 = "wikitext2"
SOURCES = (WIKITEXT2,)


def load_tokens(source: str | os.PathLike, tokenizer: Any, *, split: str = "test") -> torch.LongTensor:
    """Tokenize a whole text as one stream.

    Args:
        source: ``"wikitext2"`` (WikiText-2 raw, ``datasets.load_dataset("wikitext", "wikitext-2-raw-v1")``,
            its ``split`` with the lines joined by ``"\\n\\n"`` as in the GPTQ reference code), or the path of
            a local UTF-8 text file (``split`` is then ignored).
        tokenizer: a Hugging Face tokenizer (called as ``tokenizer(text, return_tensors="pt")``); special
            tokens are added as the tokenizer does by default (e.g. Llama's BOS at the start), as GPTQ does.
        split: the WikiText-2 split: ``"train"``, ``"validation"`` or ``"test"``.

    Returns:
        LongTensor of shape (1, N): the token ids.

    Raises:
        FileNotFoundError: ``source`` is neither ``"wikitext2"`` nor an existing file.
        RuntimeError: WikiText-2 could not be loaded (offline, ``HF_HUB_OFFLINE=1``, not in the local
            cache, or ``datasets`` missing); the message says to pass a local text file instead.
    """
    if str(source) == WIKITEXT2:
        text = _wikitext2(split)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no such text file: {str(path)!r} (source must be {WIKITEXT2!r} or the path "
                                    "of a local UTF-8 text file)")
        text = path.read_text(encoding="utf-8")
    if not text:
        raise ValueError(f"{source}: the text is empty")
    # verbose=False: the stream is longer than the model's context on purpose (it is cut into windows
    # later), so the tokenizer's "sequence length is longer than the maximum" warning would only mislead.
    ids = tokenizer(text, return_tensors="pt", verbose=False).input_ids
    return ids.long().reshape(1, -1)


def _wikitext2(split: str) -> str:
    """WikiText-2 raw ``split``, its lines joined by ``"\\n\\n"``; RuntimeError (fast) when unavailable."""
    hint = ("pass the path of a local UTF-8 text file instead (e.g. benchmarks/models/tiny-llama/test.txt), or "
            "run once with network access so that datasets caches WikiText-2")
    try:
        import datasets
    except ImportError as exc:
        raise RuntimeError(f"WikiText-2 needs the `datasets` package, which is not installed; {hint}") from exc
    try:
        data = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
    except Exception as exc:  # offline mode, no network, not cached, bad split: all mean "no data here"
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else "it could not be loaded"
        raise RuntimeError(f"WikiText-2 (wikitext-2-raw-v1, split {split!r}) is not available: {why} "
                           f"({type(exc).__name__}: {exc}); {hint}") from exc
    return "\n\n".join(data["text"])


def calibration_batches(tokens: torch.LongTensor, nsamples: int, seqlen: int, seed: int = 0
                        ) -> list[dict[str, torch.Tensor]]:
    """``nsamples`` windows of ``seqlen`` tokens at random offsets of ``tokens`` (GPTQ's calibration set).

    The offsets are GPTQ's: ``random.seed(seed)`` then ``randint(0, N - seqlen - 1)`` per window, so the same
    stream and seed give the reference code's windows. Windows may overlap.

    Args:
        tokens: LongTensor (1, N), e.g. from :func:`load_tokens` on the training text.
        nsamples: number of windows.
        seqlen: tokens per window; the stream needs at least ``seqlen + 1`` tokens.
        seed: the offsets depend only on it (and N, seqlen).

    Returns:
        ``nsamples`` dicts ``{"input_ids": LongTensor (1, seqlen), "attention_mask": LongTensor (1, seqlen) of
        ones}``, ready for ``bqq.Calibration(batches)``.
    """
    tokens = _as_stream(tokens)
    if nsamples < 1 or seqlen < 1:
        raise ValueError(f"nsamples and seqlen must be positive, got nsamples={nsamples}, seqlen={seqlen}")
    n = tokens.shape[1]
    if n < seqlen + 1:
        raise ValueError(f"the text has {n} tokens, calibration windows of seqlen={seqlen} need at least "
                         f"{seqlen + 1}: use a longer text or a smaller seqlen")
    rng = random.Random(seed)
    batches = []
    for _ in range(nsamples):
        start = rng.randint(0, n - seqlen - 1)
        ids = tokens[:, start:start + seqlen].clone()
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return batches


@torch.no_grad()  # not inference_mode: a quantized layer may cache a dense weight that later training must use
def perplexity(model: nn.Module, tokens: torch.LongTensor, *, seqlen: int = 2048,
               device: str | torch.device | None = None, progress: bool | None = None) -> float:
    """Perplexity of a causal LM over non-overlapping windows of ``seqlen`` tokens (GPTQ's evaluation).

    The stream is cut into ``nsamples = N // seqlen`` windows (the trailing partial window is dropped); each
    window is run alone (``model(input_ids, use_cache=False).logits``, shape (1, seqlen, vocab)) and scored by
    its mean next-token negative log-likelihood over its ``seqlen - 1`` predicted tokens. As in the reference
    code each window's mean NLL is weighted by ``seqlen``, so the result is
    ``exp(Σ_w seqlen · nll_w / (nsamples · seqlen))``, the exponential of the mean window NLL.

    Args:
        model: a Hugging Face causal LM (anything whose call returns ``.logits``, a tuple starting with the
            logits, or the logits tensor). It is put in eval mode for the call and restored after.
        tokens: LongTensor (1, N), e.g. from :func:`load_tokens`.
        seqlen: window length; ``N >= seqlen`` is required.
        device: where the windows are sent (None: the device of the model's first parameter, else CPU).
        progress: tqdm bar over windows (None: only on a terminal).

    Returns:
        The perplexity (float). Deterministic for a deterministic model.
    """
    tokens = _as_stream(tokens)
    if seqlen < 2:
        raise ValueError(f"seqlen must be at least 2 (one predicted token per window), got {seqlen}")
    nsamples = tokens.shape[1] // seqlen
    if nsamples == 0:
        raise ValueError(f"the text has {tokens.shape[1]} tokens, fewer than one window of seqlen={seqlen}: use a "
                         "longer text or a smaller seqlen")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    training = model.training
    model.eval()
    total = 0.0
    try:
        for i in progress_bar(range(nsamples), progress=progress, desc="perplexity", unit="window"):
            ids = tokens[:, i * seqlen:(i + 1) * seqlen].to(device)
            logits = _logits(model(ids, use_cache=False))
            # logits at position t predict token t + 1; float32 so a half-precision model's loss is not rounded
            shift = logits[:, :-1, :].float()
            nll = F.cross_entropy(shift.reshape(-1, shift.shape[-1]), ids[:, 1:].reshape(-1))
            total += float(nll) * seqlen
    finally:
        model.train(training)
    return math.exp(total / (nsamples * seqlen))


def _logits(output: Any) -> torch.Tensor:
    """The logits (1, seqlen, vocab) of a model call's output: ``.logits``, a tuple's first item, or a tensor."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, (tuple, list)):
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model's output ({type(output).__name__}) has no logits")
    return logits


def _as_stream(tokens: torch.Tensor) -> torch.Tensor:
    """``tokens`` as a (1, N) integer tensor; a 1-D stream is accepted too."""
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch.LongTensor of shape (1, N), got {type(tokens).__name__}")
    if tokens.dim() == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.dim() != 2 or tokens.shape[0] != 1:
        raise ValueError(f"tokens must have shape (1, N), got {tuple(tokens.shape)}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be integer token ids, got {tokens.dtype}")
    return tokens.long()


__all__ = ["SOURCES", "WIKITEXT2", "calibration_batches", "load_tokens", "perplexity"]
