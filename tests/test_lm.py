"""bqq.lm: perplexity, calibration windows and token streams with the GPTQ-lineage conventions, and the
committed tiny Llama (benchmarks/models/tiny-llama) that the LLM benchmark quantizes."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import pytest
import torch

from bqq.lm import calibration_batches, load_tokens, perplexity

TINY = Path(__file__).resolve().parents[1] / "benchmarks" / "models" / "tiny-llama"


def transformers_module():
    pytest.importorskip("transformers")  # the [hf] extra; CI installs it
    from bqq.compat import import_transformers

    return import_transformers()


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
    if not (TINY / "model.safetensors").exists():
        pytest.fail(f"{TINY} is missing: python -m benchmarks.train_tiny_llama writes it")
    tokenizer = transformers.AutoTokenizer.from_pretrained(TINY)
    model = transformers.AutoModelForCausalLM.from_pretrained(TINY).eval()
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert config.num_key_value_heads < config.num_attention_heads  # GQA
    assert config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    text = (TINY / "test.txt").read_text(encoding="utf-8")
    assert tokenizer.decode(tokenizer(text[:500]).input_ids) == text[:500]  # byte-level BPE: lossless
    seqlen = config.max_position_embeddings
    tokens = load_tokens(TINY / "test.txt", tokenizer)[:, :4 * seqlen]  # a slice of the held-out text
    trained = perplexity(model, tokens, seqlen=seqlen, progress=False)
    torch.manual_seed(0)
    untrained = perplexity(transformers.LlamaForCausalLM(config).eval(), tokens, seqlen=seqlen, progress=False)
    assert math.isfinite(trained) and untrained > 0.5 * config.vocab_size  # random init: about uniform
    assert trained < untrained / 10, (trained, untrained)


def test_llm_benchmark_measures_rows_and_keeps_earlier_ones(tmp_path):
    """benchmarks/ptq_llm.py end to end on the committed tiny Llama (short windows, few samples): rows merge
    across runs, the noise row perturbs only the block weights, bits/weight counts the group scalars."""
    transformers_module()
    from benchmarks import ptq_llm

    text = tmp_path / "test_slice.txt"  # a slice of the held-out text keeps the perplexity passes short
    text.write_text((TINY / "test.txt").read_text()[:8000])
    small = ["--seqlen", "64", "--nsamples", "2", "--text", str(text), "--out", str(tmp_path)]
    ptq_llm.main(["--bits", "4", "--rows", "fp", "noise", "rtn", *small])
    ptq_llm.main(["--bits", "4", "--rows", "gptq", *small])
    result = json.loads((tmp_path / "ptq_llm.json").read_text())
    by = {(r["row"], r["bits"]): r for r in result["rows"]}
    assert set(by) == {("fp", None), ("noise", None), ("rtn", 4), ("gptq", 4)}
    fp = by["fp", None]["perplexity"]
    assert by["noise", None]["perplexity"] > fp  # 50 % noise on every block weight must cost something
    for row in ("rtn", "gptq"):
        assert by[row, 4]["bits_per_weight"] == pytest.approx(4.5)  # 4-bit codes + two FP32 scalars per 128
        assert by[row, 4]["chosen"] == {"uq" if row == "rtn" else "gptq": 28}
        assert by[row, 4]["ratio"] == pytest.approx(by[row, 4]["perplexity"] / fp)
    assert len(result["commands"]) == 2
    assert "| 4 | GPTQ | yes | 1x128 |" in (tmp_path / "ptq_llm.md").read_text()

    ptq_llm.main(["--bits", "4", "--rows", "fp", "--seed", "1", *small])  # other settings: a new table
    assert [r["row"] for r in json.loads((tmp_path / "ptq_llm.json").read_text())["rows"]] == ["fp"]
    (moved,) = tmp_path.glob("ptq_llm.*.json")  # ... and the earlier one is kept beside it, not overwritten
    assert json.loads(moved.read_text()) == result
    assert moved.with_suffix(".md").exists()


def test_llms_get_the_llm_grouping_and_schedule_unless_the_user_sets_them():
    from bqq.config import QuantizeConfig
    from bqq.ptq.plan import LLM_GROUP, LLM_SCHEDULE, is_llm, plan_layers

    tr = transformers_module()
    config = tr.LlamaConfig(hidden_size=320, intermediate_size=640, num_hidden_layers=1, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=64)
    llm = tr.LlamaForCausalLM(config)
    encoder = tr.BertModel(tr.BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=64))
    assert is_llm(llm) and not is_llm(encoder)
    def plan_layers_of(model, method, **options):
        return plan_layers(model, QuantizeConfig.from_kwargs(2, method=method, **options))

    plans, _ = plan_layers_of(llm, "bqq")
    by_name = {p.name: p for p in plans}
    assert by_name["model.layers.0.mlp.up_proj"].group_shape == LLM_GROUP  # 640x320 in 256x256 tiles (balanced)
    assert all(p.opts == LLM_SCHEDULE for p in plans)
    plans, _ = plan_layers_of(llm, "bqq", sweep_budget=1e5)
    assert plans[0].opts == {**LLM_SCHEDULE, "sweep_budget": 1e5}  # the user's option wins
    plans, _ = plan_layers_of(llm, "uq")
    assert plans[0].opts == {}  # the schedule is BQQ's
    plans, _ = plan_layers_of(encoder, "bqq")
    assert all(p.group_shape == (64, 64) and p.opts == {} for p in plans if p.shape == (64, 64))
    wide = torch.nn.Sequential(torch.nn.Linear(1024, 1024))
    wide.embed_dim = 1024  # a model at least LLM_MIN_WIDTH wide
    plans, _ = plan_layers_of(wide, "bqq")
    assert is_llm(wide) and plans[0].group_shape == LLM_GROUP


def test_llm_scale_check_counts_forwards_and_memory(tmp_path):
    """benchmarks/llm_scale.py on a toy Llama: the embedding runs at most twice per batch, each solved block
    at most its stages + 2 times (its FP copy likewise), a block after the last solved one only in the opening
    forward."""
    transformers_module()
    from benchmarks import llm_scale

    doc = llm_scale.main(["--shape", "toy", "--blocks", "2", "--nsamples", "2", "--seqlen", "16",
                          "--out", str(tmp_path)])
    runs = doc["runs_per_batch"]
    stages = 4  # q/k/v, o, gate/up, down
    assert runs["embedding"] <= 2
    for name in ("block 0", "block 1", "block 0 FP copy", "block 1 FP copy"):  # corrected: an FP copy each
        assert 1 < runs[name] <= stages + 2, (name, runs)
    assert runs["block 2"] * 2 == 1  # not solved: it ran once in all, in the opening forward (first batch)
    assert doc["blocks_solved"] == 2 and len(doc["per_block_s"]) == 2
    # a toy's own memory is within the RSS noise (CI measured peak == runtime), so only sanity here
    assert doc["peak_rss_bytes"] > doc["model_bytes"] and math.isfinite(doc["memory_ratio"])
    assert "| peak / (model + activations) |" in (tmp_path / "llm_scale_toy_gptq-calibrated.md").read_text()


def test_llm_scale_times_data_free_bqq(tmp_path):
    transformers_module()
    from benchmarks import llm_scale

    doc = llm_scale.main(["--shape", "toy", "--method", "bqq", "--data-free", "--blocks", "1", "--out", str(tmp_path)])
    assert doc["method"] == "bqq" and doc["bits"] == 2 and not doc["calibrated"]
    assert doc["blocks_solved"] == 1 and doc["per_block_s"] == [] and doc["median_block_s"] == doc["quantize_s"]
    assert doc["projected_model_s"] == doc["median_block_s"] * 3 and doc["groups"]
    assert "BQQ 2-bit, data-free" in (tmp_path / "llm_scale_toy_bqq-data-free.md").read_text()
