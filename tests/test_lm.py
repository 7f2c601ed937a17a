"""bqq.lm: perplexity, calibration windows and token streams with the GPTQ-lineage conventions, and the
committed tiny Llama (benchmarks/models/tiny-llama) that the LLM benchmark quantizes (the benchmark itself:
tests/benchmarks/test_ptq_llm.py)."""

from __future__ import annotations

import math
import random
import time

import pytest
import torch

from bqq.lm import calibration_batches, load_tokens, perplexity
from tests.helpers import TINY_LLAMA, transformers_module


def small_llama(vocab: int = 61, seed: int = 0):
    """A random-init LlamaForCausalLM with GQA and tied embeddings, small enough for a unit test."""
    transformers = transformers_module()
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(config).eval()


def direct_perplexity(model, tokens: torch.Tensor, seqlen: int) -> float:
    """exp of the mean over windows of each window's mean next-token NLL, from log-softmax by hand."""
    nlls = []
    with torch.no_grad():
        for i in range(tokens.shape[1] // seqlen):
            ids = tokens[:, i * seqlen:(i + 1) * seqlen]
            log_p = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
            nlls.append(-log_p.gather(1, ids[0, 1:, None]).mean().item())
    return math.exp(sum(nlls) / len(nlls))


def test_perplexity_equals_a_direct_computation_and_drops_the_tail():
    model = small_llama()
    seqlen = 16
    tokens = torch.randint(0, 61, (1, 3 * seqlen + 7), generator=torch.Generator().manual_seed(1))
    ppl = perplexity(model, tokens, seqlen=seqlen, progress=False)
    assert ppl == pytest.approx(direct_perplexity(model, tokens, seqlen), rel=1e-5)
    # random init predicts close to uniform over the vocabulary
    assert 30 < ppl < 120
    # the trailing partial window is dropped: the same as the 3 full windows alone
    assert perplexity(model, tokens[:, :3 * seqlen], seqlen=seqlen, progress=False) == ppl
    # deterministic, and a 1-D stream is the same stream
    assert perplexity(model, tokens[0], seqlen=seqlen, progress=False) == ppl
    # windows are scored alone: another split of the stream gives another number
    assert perplexity(model, tokens, seqlen=24, progress=False) != pytest.approx(ppl, rel=1e-6)


def test_perplexity_restores_the_training_mode_and_rejects_short_texts():
    model = small_llama().train()
    tokens = torch.arange(40).remainder(61).unsqueeze(0)
    perplexity(model, tokens, seqlen=20, progress=False)
    assert model.training
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity(model, tokens, seqlen=41, progress=False)
    with pytest.raises(ValueError, match=r"shape \(1, N\)"):
        perplexity(model, tokens.expand(2, -1), seqlen=20, progress=False)
    with pytest.raises(TypeError, match="integer token ids"):
        perplexity(model, tokens.float(), seqlen=20, progress=False)


def test_calibration_batches_are_gptq_windows_deterministic_by_seed():
    tokens = torch.arange(1000).unsqueeze(0)
    batches = calibration_batches(tokens, nsamples=5, seqlen=32, seed=3)
    assert len(batches) == 5
    rng = random.Random(3)  # the reference code's offsets: random.seed(seed); randint(0, N - seqlen - 1)
    for batch in batches:
        assert set(batch) == {"input_ids", "attention_mask"}
        assert batch["input_ids"].shape == batch["attention_mask"].shape == (1, 32)
        assert batch["input_ids"].dtype == torch.long and bool((batch["attention_mask"] == 1).all())
        start = rng.randint(0, 1000 - 32 - 1)
        assert torch.equal(batch["input_ids"][0], torch.arange(start, start + 32))
    again = calibration_batches(tokens, nsamples=5, seqlen=32, seed=3)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again, strict=True))
    other = calibration_batches(tokens, nsamples=5, seqlen=32, seed=4)
    assert any(not torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, other, strict=True))
    # the windows are independent of the tensor they came from
    batches[0]["input_ids"].zero_()
    assert tokens[0, 1] == 1


def test_calibration_batches_need_seqlen_plus_one_tokens():
    calibration_batches(torch.arange(33).unsqueeze(0), nsamples=2, seqlen=32)
    with pytest.raises(ValueError, match="at least 33"):
        calibration_batches(torch.arange(32).unsqueeze(0), nsamples=2, seqlen=32)
    with pytest.raises(ValueError, match="positive"):
        calibration_batches(torch.arange(100).unsqueeze(0), nsamples=0, seqlen=32)


class CharTokenizer:
    """The calling convention of a Hugging Face tokenizer, one token per character."""

    def __call__(self, text: str, return_tensors: str = "pt", verbose: bool = True):
        assert return_tensors == "pt"
        return type("Encoding", (), {"input_ids": torch.tensor([[ord(c) for c in text]])})()


def test_load_tokens_reads_a_local_text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("héllo\n\nworld", encoding="utf-8")
    tokens = load_tokens(str(path), CharTokenizer())
    assert tokens.shape == (1, 12) and tokens.dtype == torch.long
    assert "".join(map(chr, tokens[0].tolist())) == "héllo\n\nworld"
    assert torch.equal(load_tokens(path, CharTokenizer()), tokens)  # a Path works too
    with pytest.raises(FileNotFoundError, match="no such text file"):
        load_tokens(tmp_path / "missing.txt", CharTokenizer())
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_tokens(tmp_path / "empty.txt", CharTokenizer())


def test_wikitext2_fails_fast_and_clearly_offline():
    pytest.importorskip("datasets")
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:  # conftest sets HF_HUB_OFFLINE=1 unless the caller chose otherwise
        pytest.skip("HF_HUB_OFFLINE is not set: loading WikiText-2 would try the network")
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as error:
        load_tokens("wikitext2", None)  # fails before the tokenizer is used
    assert time.perf_counter() - start < 30
    message = str(error.value)
    assert "WikiText-2" in message and "HF_HUB_OFFLINE" in message and "local UTF-8 text file" in message


def test_committed_tiny_llama_loads_offline_and_beats_random_init():
    transformers = transformers_module()
    if not (TINY_LLAMA / "model.safetensors").exists():
        pytest.fail(f"{TINY_LLAMA} is missing: python -m benchmarks.train_tiny_llama writes it")
    tokenizer = transformers.AutoTokenizer.from_pretrained(TINY_LLAMA)
    model = transformers.AutoModelForCausalLM.from_pretrained(TINY_LLAMA).eval()
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert config.num_key_value_heads < config.num_attention_heads  # GQA
    assert config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    text = (TINY_LLAMA / "test.txt").read_text(encoding="utf-8")
    assert tokenizer.decode(tokenizer(text[:500]).input_ids) == text[:500]  # byte-level BPE: lossless
    seqlen = config.max_position_embeddings
    tokens = load_tokens(TINY_LLAMA / "test.txt", tokenizer)[:, :4 * seqlen]  # a slice of the held-out text
    trained = perplexity(model, tokens, seqlen=seqlen, progress=False)
    torch.manual_seed(0)
    untrained = perplexity(transformers.LlamaForCausalLM(config).eval(), tokens, seqlen=seqlen, progress=False)
    assert math.isfinite(trained) and untrained > 0.5 * config.vocab_size  # random init: about uniform
    assert trained < untrained / 10, (trained, untrained)


