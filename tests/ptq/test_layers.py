"""bqq.ptq.layers, any module: quantized layers compute what their module computed, tied weights, coverage,
calibration on architectures with their own norms (BN folding: test_fold.py)."""


import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bqq
from bqq.ptq.calibrate import is_norm, tunable_parameters
from bqq.ptq.layers import LINEAR, LINEAR_T, WEIGHT, layer_kind
from bqq.ptq.modules import QuantizedWeight, quantized_weight
from bqq.ptq.report import coverage_report
from tests.ptq.common import SamePadConv, relative

FAST = {"sweeps": 60}


def _transformers():
    pytest.importorskip("transformers")  # the [hf] extra; CI installs it
    from bqq.compat import import_transformers

    return import_transformers()


class ScaledLinear(nn.Linear):
    """A Linear whose forward uses its weight in its own way (LoRA-like wrappers do)."""

    def forward(self, x):
        return 0.5 * F.linear(x, self.weight, self.bias) + x[..., : self.out_features]


def test_subclasses_keep_their_forward_with_the_quantized_weight():
    torch.manual_seed(0)
    model = nn.Sequential(SamePadConv(3, 8, 3, stride=2), nn.Flatten(1), ScaledLinear(8 * 16 * 16, 64))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    bqq.quantize(model, bits=8, method="uq", group_size=(1, 10_000), progress=False)
    assert isinstance(model[0], SamePadConv) and isinstance(model[2], ScaledLinear)  # the modules stay
    for layer in (model[0], model[2]):
        param = quantized_weight(layer)
        assert isinstance(param, QuantizedWeight)
        # forward reads exactly the dequantized matrix, in the module's own weight shape
        assert torch.equal(layer.weight, param.qweight.dequantize().reshape(layer.weight.shape))
    with torch.no_grad():
        out = model(x)
    assert relative(out, ref) < 1e-2
    expected = model[2](model[1](F.conv2d(F.pad(x, (0, 1, 0, 1)), model[0].weight, model[0].bias, 2)))
    torch.testing.assert_close(out, expected)


def test_multihead_attention_projection_is_read_through_its_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0))
    x = torch.randn(2, 5, 32)
    model.eval()
    with torch.no_grad():
        ref = model(x)
    with pytest.warns(UserWarning, match="in_proj_weight"):
        bqq.quantize(model, bits=8, method="uq", progress=False)
    out_proj = model[0].self_attn.out_proj
    assert quantized_weight(out_proj) is not None  # MHA calls F.multi_head_attention_forward with .weight
    with torch.no_grad():
        assert relative(model(x), ref) < 2e-2
    left = {row["module"]: row["reason"] for row in coverage_report(model)["left_fp"]}
    assert "not a known layer type" in left["0.self_attn"]  # in_proj_weight is reported, not silently skipped


def test_layer_kinds():
    transformers = _transformers()
    from transformers.pytorch_utils import Conv1D

    assert layer_kind(nn.Linear(3, 4)).name == LINEAR
    assert layer_kind(Conv1D(4, 3)).name == LINEAR_T
    assert layer_kind(SamePadConv(3, 4, 3)).name == WEIGHT
    depthwise = layer_kind(nn.Conv2d(4, 4, 3, groups=4))
    assert depthwise.name == WEIGHT and not depthwise.hessian
    assert "embedding" in layer_kind(nn.Embedding(10, 4))
    assert "transposed" in layer_kind(nn.ConvTranspose2d(3, 4, 2))
    assert transformers is not None


def _gpt2():
    transformers = _transformers()
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=16)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def test_gpt2_conv1d_projections_are_quantized_and_the_tied_head_stays_fp(caplog):
    model = _gpt2()
    ids = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        ref = model(ids).logits
    with caplog.at_level("INFO", logger="bqq"):
        bqq.quantize(model, bits=8, method="uq", progress=False)
    coverage = coverage_report(model)
    names = {row["module"] for row in coverage["quantized"]}
    assert {"transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"} <= names and len(names) == 8
    left = {row["module"]: row["reason"] for row in coverage["left_fp"]}
    assert "tied to transformer.wte" in left["lm_head"] and "embedding" in left["transformer.wte"]
    assert coverage["layer_fraction"] == 1.0
    assert model.lm_head.weight is model.transformer.wte.weight  # untouched: still one FP tensor
    with torch.no_grad():
        assert relative(model(ids).logits, ref) < 1e-2
    assert "left in floating point" in caplog.text and "lm_head" in caplog.text


def test_included_tied_head_shares_one_quantized_weight_and_round_trips(tmp_path):
    model = _gpt2()
    ids = torch.randint(0, 64, (2, 8))
    bqq.quantize(model, bits=4, method="uq", include=["*"], progress=False)
    head, embedding = quantized_weight(model.lm_head), quantized_weight(model.transformer.wte)
    assert head is not None and head is embedding  # one quantized tensor for both uses
    rows = coverage_report(model)["quantized"]
    assert sum(row["shared_with"] == ["lm_head"] for row in rows) == 1
    with torch.no_grad():
        out = model(ids).logits
    bqq.save_quantized(model, tmp_path / "gpt2.safetensors")
    again = bqq.load_quantized(tmp_path / "gpt2.safetensors", _gpt2())
    assert quantized_weight(again.lm_head) is quantized_weight(again.transformer.wte)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, out)


def _llama(layers: int = 2):
    transformers = _transformers()
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def test_output_embedding_stays_fp_unless_included():
    model = _llama()
    bqq.quantize(model, bits=8, method="uq", progress=False)
    left = {row["module"]: row["reason"] for row in coverage_report(model)["left_fp"]}
    assert "output embedding" in left["lm_head"] and isinstance(model.lm_head, nn.Linear)
    model = _llama()
    bqq.quantize(model, bits=8, method="uq", include=["*proj", "lm_head"], progress=False)
    assert "lm_head" in {row["module"] for row in coverage_report(model)["quantized"]}


def test_calibrated_llama_finishes_and_saves(tmp_path):
    model = _llama(4)
    torch.manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 64, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
               for _ in range(2)]
    bqq.quantize(model, bits=2, method="uq", calibration=batches, progress=False)  # corrected inputs, epochs=0
    assert coverage_report(model)["layer_fraction"] == 1.0
    bqq.save_quantized(model, tmp_path / "llama.safetensors")
    norms = [m for m in _llama(4).modules() if is_norm(m)]
    assert len(norms) == 4 * 2 + 1  # LlamaRMSNorm is recognized by what it is
    assert tunable_parameters(_llama()) != []


def test_c_bqq_with_nothing_to_tune_fails_before_any_work(monkeypatch):
    model = nn.Sequential(nn.Linear(8, 8, bias=False), nn.ReLU(), nn.Linear(8, 4, bias=False))
    import sys

    monkeypatch.setattr(sys.modules["bqq.ptq.quantize"], "run_jobs", lambda *a, **k: pytest.fail("solved first"))
    with pytest.raises(ValueError, match="set epochs=0"):
        bqq.quantize(model, bits=2, calibration=bqq.Calibration([torch.randn(4, 8)], epochs=1), progress=False)


class RawProjection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Parameter(torch.randn(64, 64))

    def forward(self, x):
        return x @ self.proj


def test_unknown_matrix_modules_are_reported_and_warned_about():
    model = nn.Sequential(nn.Linear(64, 64), RawProjection())
    with pytest.warns(UserWarning, match="left large weights in floating point.*RawProjection"):
        bqq.quantize(model, bits=8, method="uq", progress=False)
    coverage = coverage_report(model)
    assert coverage["quantized_fraction"] == pytest.approx(64 * 64 / (2 * 64 * 64 + 64))
    # FP leftovers count at 32 bits, the quantized weight at its stored bits
    bits = model[0].qweight.total_bits + 32 * (64 * 64 + 64)
    assert coverage["model_bits_per_param"] == pytest.approx(bits / (2 * 64 * 64 + 64))
