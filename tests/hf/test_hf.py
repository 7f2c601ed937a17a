"""Hugging Face integration (bqq.hf) and the LLM command line (bqq quantize, bqq eval-ppl).

Tiny random-init models built here (Llama with GQA and tied embeddings, GPT-2's Conv1D), a character-level
tokenizer built with the ``tokenizers`` library, nothing downloaded. The contract:
- ``save_pretrained`` of a quantized model and ``from_pretrained`` (after ``import bqq``) give identical logits
  (torch.equal), tied embeddings stay tied, without the original FP weights;
- ``bqq.load_quantized`` rebuilds HF models without a skeleton (directories and save_quantized files);
- damaged, mismatched or newer checkpoints and a missing transformers raise clear errors;
- ``bqq quantize`` writes a from_pretrained-loadable directory with the tokenizer, ``bqq eval-ppl`` reads it, and
  a run killed with SIGKILL resumes from its cache to a bit-identical result.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import signal
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import bqq
from bqq.cli import main
from bqq.format import FormatError
from bqq.ptq.modules import QuantizedLinear, quantized_weight

if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("tokenizers") is None:
    pytest.skip("transformers is not installed (the [hf] extra)", allow_module_level=True)

from bqq.compat import import_transformers

tr = import_transformers()
ROOT = Path(__file__).resolve().parents[2]
VOCAB = 64
IDS = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def tiny_llama(tied: bool = True) -> torch.nn.Module:
    """2 layers of width 64, 4 query heads sharing 2 key/value heads (GQA)."""
    torch.manual_seed(0)
    config = tr.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                            tie_word_embeddings=tied)
    return tr.LlamaForCausalLM(config).eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def quantize(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    bqq.quantize(model, progress=False, **kwargs)
    # bqq.quantize is to call bqq.hf.attach itself (a line in bqq/ptq/quantize.py, pending); idempotent
    bqq.hf.attach(model)
    return model


def fp_keys_only(directory: Path) -> set[str]:
    """The names of the tensors in a checkpoint that are not bqq's packed arrays."""
    from safetensors import safe_open

    keys = set()
    for file in directory.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            keys |= {k for k in f.keys() if bqq.hf.PACKED_INFIX not in k}
    return keys


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tied Llama quantized with 2-bit UQ, its logits, and its save_pretrained directory."""
    model = quantize(tiny_llama(), bits=2, method="uq")
    directory = tmp_path_factory.mktemp("hf") / "llama-uq"
    model.save_pretrained(directory)
    return model, logits(model), directory


# --- save_pretrained / from_pretrained ------------------------------------------------------------------

def test_from_pretrained_gives_identical_logits(saved):
    model, expected, directory = saved
    config = json.loads((directory / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "bqq" and config["bqq_version"] == bqq.__version__
    assert set(config["layers"]) == {name for name, _ in bqq.ptq.quantized_layers(model)}
    # the FP tensors are all there (norms, the tied embedding once); no dense copy of a quantized weight
    assert fp_keys_only(directory) == {k for k in model.state_dict() if k != "lm_head.weight"}

    loaded = tr.AutoModelForCausalLM.from_pretrained(directory)
    assert isinstance(loaded.model.layers[0].self_attn.k_proj, QuantizedLinear)
    assert torch.equal(logits(loaded), expected)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # tied stays tied
    assert bqq.ptq.layer_report(loaded) == bqq.ptq.layer_report(model)  # selections travel too

    again = directory.parent / "again"  # a loaded model saves again, to the same files
    loaded.save_pretrained(again)
    assert (again / "model.safetensors").read_bytes() == (directory / "model.safetensors").read_bytes()


def test_bqq_method_bfloat16_sharded(tmp_path):
    """2* BQQ on an untied Llama loaded in bfloat16, saved in shards."""
    tiny_llama(tied=False).save_pretrained(tmp_path / "fp")
    model = tr.AutoModelForCausalLM.from_pretrained(tmp_path / "fp", dtype=torch.bfloat16).eval()
    quantize(model, bits=2, method="bqq", sweeps=20)
    model.save_pretrained(tmp_path / "q", max_shard_size="20KB")
    assert (tmp_path / "q" / "model.safetensors.index.json").is_file()
    loaded = tr.AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert loaded.model.layers[1].mlp.down_proj.method == "bqq"
    assert loaded.lm_head.weight.dtype == torch.bfloat16
    assert torch.equal(logits(loaded), logits(model))


def test_gpt2_conv1d(tmp_path):
    torch.manual_seed(0)
    config = tr.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=32, bos_token_id=0,
                           eos_token_id=0)
    model = quantize(tr.GPT2LMHeadModel(config).eval(), bits=2, method="uq")
    model.save_pretrained(tmp_path)
    loaded = tr.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded.transformer.h[0].attn.c_attn, QuantizedLinear)  # Conv1D as a linear of Wᵀ
    assert torch.equal(logits(loaded), logits(model))
    assert loaded.lm_head.weight is loaded.transformer.wte.weight


def test_quantized_tied_lm_head(tmp_path):
    """include=["lm_head"] on a tied LM: one quantized weight for both modules, shared again after loading."""
    model = quantize(tiny_llama(), bits=2, method="uq", include=["*proj", "lm_head"])
    model.save_pretrained(tmp_path)
    loaded = tr.AutoModelForCausalLM.from_pretrained(tmp_path)
    shared = quantized_weight(loaded.lm_head)
    assert shared is not None and shared is quantized_weight(loaded.model.embed_tokens)
    assert torch.equal(logits(loaded), logits(model))


def test_quantize_attaches_the_hf_quantizer():
    model = tiny_llama()
    bqq.quantize(model, bits=2, method="uq", progress=False)
    assert getattr(model, "hf_quantizer", None) is not None
    assert model.config.quantization_config.quant_method == "bqq"


# --- load_quantized without a skeleton ---------------------------------------------------------------

def test_load_quantized_without_skeleton(saved, tmp_path):
    model, expected, directory = saved
    from_dir = bqq.load_quantized(directory)
    assert type(from_dir).__name__ == "LlamaForCausalLM" and torch.equal(logits(from_dir), expected)

    bqq.save_quantized(model, tmp_path / "m.safetensors")
    from_file = bqq.load_quantized(tmp_path / "m.safetensors")  # the architecture recorded in the file
    assert torch.equal(logits(from_file), expected)
    assert from_file.lm_head.weight is from_file.model.embed_tokens.weight
    skeleton = bqq.load_quantized(tmp_path / "m.safetensors", tiny_llama())  # today's signature
    assert torch.equal(logits(skeleton), expected)
    from_file.save_pretrained(tmp_path / "resaved")  # a loaded model is save_pretrained-ready
    assert torch.equal(logits(tr.AutoModelForCausalLM.from_pretrained(tmp_path / "resaved")), expected)

    with pytest.raises(TypeError, match="directory"):
        bqq.load_quantized(directory, tiny_llama())


def test_load_quantized_without_skeleton_needs_an_hf_model(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(64, 64))
    bqq.quantize(model, bits=2, method="uq", progress=False)
    bqq.save_quantized(model, tmp_path / "plain.safetensors")
    with pytest.raises(TypeError, match="pass a model"):
        bqq.load_quantized(tmp_path / "plain.safetensors")


# --- clear errors -------------------------------------------------------------------------------------

def _copy(directory: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(directory, target)
    return target


def _flip_byte_of(path: Path, key: str, offset: int = 0) -> None:
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    start = json.loads(data[8:8 + header_len])[key]["data_offsets"][0]
    data[8 + header_len + start + offset] ^= 0x40
    path.write_bytes(bytes(data))


def _edit_config(directory: Path, edit) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config["quantization_config"])
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("damage, message", [
    (lambda d: _flip_byte_of(d / "model.safetensors", "model.layers.0.mlp.up_proj.qweight.codes.0.0"),
     "checksum mismatch"),
    (lambda d: _flip_byte_of(d / "model.safetensors", "model.norm.weight", 3), "'model.norm.weight' differs"),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-64]), "truncated"),
    (lambda d: _edit_config(d, lambda q: q["layers"].pop("model.layers.1.mlp.down_proj")), "checksum mismatch"),
    (lambda d: _edit_config(d, lambda q: q.update(format_version=99, bqq_version="99.0")), "upgrade bqq"),
])
def test_damaged_checkpoints_raise(saved, tmp_path, damage, message):
    directory = _copy(saved[2], tmp_path)
    damage(directory)
    with pytest.raises(FormatError, match=message):
        tr.AutoModelForCausalLM.from_pretrained(directory)


def test_transformers_missing(saved, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    with pytest.raises(ImportError, match=r"bqq\[hf\]"):
        bqq.load_quantized(saved[2])
    assert main(["eval-ppl", str(saved[2])]) == 2
    assert "bqq[hf]" in capsys.readouterr().err


def test_import_bqq_does_not_import_transformers():
    code = ("import sys, bqq\n"
            "assert 'transformers' not in sys.modules, 'import bqq imported transformers'\n"
            "print(any(type(f).__name__ == '_RegisterOnImport' for f in sys.meta_path))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"  # waiting for transformers' quantizer registry to be imported


def test_registers_when_the_registry_is_imported(tmp_path, monkeypatch):
    """The import hook, on a stand-in for transformers.quantizers.auto: register() runs right after the module
    has executed, once, and the hook leaves sys.meta_path."""
    (tmp_path / "bqq_test_registry.py").write_text("EXECUTED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(bqq.hf.registry, "_REGISTRY", "bqq_test_registry")
    calls = []
    monkeypatch.setattr(bqq.hf.registry, "register", lambda: calls.append(sys.modules["bqq_test_registry"].EXECUTED))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.delitem(sys.modules, "bqq_test_registry", raising=False)
    bqq.hf.register_with_transformers()
    assert isinstance(sys.meta_path[0], bqq.hf.registry._RegisterOnImport) and not calls
    import bqq_test_registry  # noqa: F401

    assert calls == [True] and not any(isinstance(f, bqq.hf.registry._RegisterOnImport) for f in sys.meta_path)
    monkeypatch.delitem(sys.modules, "bqq_test_registry")


def test_registered_with_transformers():
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

    bqq.hf.register_with_transformers()  # the registry is imported: registers at once, idempotent
    assert AUTO_QUANTIZER_MAPPING["bqq"] is bqq.hf.BqqHfQuantizer
    assert AUTO_QUANTIZATION_CONFIG_MAPPING["bqq"] is bqq.hf.BqqConfig


# --- command line -------------------------------------------------------------------------------------

def char_tokenizer():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    chars = string.ascii_lowercase + string.digits + " .,;:!?'-\n"
    vocab = {"<unk>": 0, **{c: i + 1 for i, c in enumerate(chars)}}
    assert len(vocab) <= VOCAB
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token per char
    return tr.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>")


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """An FP model directory with a tokenizer, a text, and one uninterrupted ``bqq quantize`` of it."""
    root = tmp_path_factory.mktemp("cli")
    source = root / "fp"
    tiny_llama().save_pretrained(source)
    char_tokenizer().save_pretrained(source)
    rng = random.Random(0)
    words = ["binary", "quadratic", "quantization", "of", "the", "model", "weights", "at", "two", "bits"]
    (root / "text.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(12)))
    args = ["--bits", "2", "--method", "bqq", "--group-size", "64", "--sweeps", "20"]
    assert main(["quantize", str(source), "-o", str(root / "ref"), *args, "--cache-dir", str(root / "ref-cache")]) == 0
    return root, args


def test_cli_quantize_and_eval_ppl(cli_run, capsys):
    root, _ = cli_run
    out = root / "ref"
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    model = tr.AutoModelForCausalLM.from_pretrained(out)
    assert {layer.method for _, layer in bqq.ptq.quantized_layers(model)} == {"bqq"}
    capsys.readouterr()
    assert main(["eval-ppl", str(out), "--text", str(root / "text.txt"), "--seqlen", "64"]) == 0
    quantized = float(capsys.readouterr().out.split("perplexity ")[1].split()[0])
    assert main(["eval-ppl", str(root / "fp"), "--text", str(root / "text.txt"), "--seqlen", "64"]) == 0
    fp = float(capsys.readouterr().out.split("perplexity ")[1].split()[0])
    assert 1 < quantized < 10 * VOCAB and 1 < fp < 10 * VOCAB  # random weights: near the vocabulary size


def test_cli_calibrated(cli_run):
    root, _ = cli_run
    out = root / "gptq"
    assert main(["quantize", str(root / "fp"), "-o", str(out), "--method", "gptq", "--calib", str(root / "text.txt"),
                 "--nsamples", "2", "--seqlen", "16"]) == 0
    assert not (out / ".bqq-cache").exists()  # the default cache is removed after success
    model = tr.AutoModelForCausalLM.from_pretrained(out)
    assert {layer.method for _, layer in bqq.ptq.quantized_layers(model)} == {"gptq"}


def test_cli_resume_after_sigkill_is_bit_identical(cli_run):
    root, args = cli_run
    out, cache = root / "killed", root / "killed-cache"
    command = ["quantize", str(root / "fp"), "-o", str(out), *args, "--cache-dir", str(cache)]
    process = subprocess.Popen([sys.executable, "-m", "bqq", *command], cwd=ROOT, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline:
            if cache.is_dir() and any(cache.glob("*.safetensors")):  # a first group is finished
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    total = len(list((root / "ref-cache").glob("*.safetensors")))
    assert 0 < len(list(cache.glob("*.safetensors"))) < total
    assert not (out / "config.json").exists()

    assert main(command) == 0  # the same command resumes
    reference = root / "ref"
    assert (out / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    assert (out / "config.json").read_text() == (reference / "config.json").read_text()
    assert torch.equal(logits(tr.AutoModelForCausalLM.from_pretrained(out)),
                       logits(tr.AutoModelForCausalLM.from_pretrained(reference)))
