"""bqq.ptq.plan: method="auto" (the default of bqq.quantize) is never worse than UQ/BCQ by weight error; the paper's
patch-embedding rule; mixed models save, load and report; group sizes; the LLM grouping and schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bqq
from bqq.cli import main as cli
from bqq.ptq import format_report, layer_report, quantized_layers
from bqq.ptq.plan import FEW_INPUTS
from tests.helpers import transformers_module

FAST = {"sweeps": 60}


class PatchNet(nn.Module):
    """4x4 patches on one channel (16 inputs per patch), a wide body and a narrow head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, 32, 4, 4)
        self.fc1, self.fc2 = nn.Linear(32, 96), nn.Linear(96, 32)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(x + self.fc2(torch.relu(self.fc1(x)))).mean(1)


def patchnet(seed: int = 0) -> PatchNet:
    torch.manual_seed(seed)
    return PatchNet().eval()


def rel_error(w: torch.Tensor, q) -> float:
    w = w.detach().reshape(w.shape[0], -1).double()
    return float((w - q.dequantize(torch.float64)).norm() / w.norm())


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_auto_never_has_a_higher_weight_error_than_uq_or_bcq(bits):
    fp = patchnet()
    q = bqq.quantize(patchnet(), bits=bits, progress=False, **FAST)
    weights = {name: m.weight for name, m in fp.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    for name, layer in quantized_layers(q):
        chosen = rel_error(weights[name], layer.qweight)
        assert layer.selection["rel_error"] == pytest.approx(chosen, rel=1e-9)
        for method in ("uq", "bcq"):  # the first-order codes at the same bits and groups, solved independently
            other = bqq.compress(weights[name].detach().reshape(weights[name].shape[0], -1), bits, method=method,
                                 group_size=layer.qweight.group_shape)
            assert chosen <= rel_error(weights[name], other) + 1e-12, (name, method)


def test_skinny_layers_leave_bqq_and_square_ones_keep_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.Linear(128, 10))  # 10x128: l = 9, BQQ loses to BCQ here
    for layer in model:  # Gaussian weights, like trained ones (torch's uniform init favours UQ everywhere)
        nn.init.normal_(layer.weight)
    bqq.quantize(model, bits=2, group_size=None, progress=False, sweeps=400)
    rows = {r["layer"]: r for r in layer_report(model)}
    assert rows["0"]["method"] == "bqq" and rows["1"]["method"] in ("uq", "bcq")
    assert set(rows["1"]["candidates"]) == {"bqq", "uq", "bcq"}
    assert rows["1"]["candidates"]["bqq"] > rows["1"]["rel_error"]


def test_small_patch_embeddings_get_channel_wise_uq_unless_overridden():
    assert 16 <= FEW_INPUTS < 768  # 4x4x1 patches get the rule, 16x16x3 ViT patches do not
    q = bqq.quantize(patchnet(), bits=2, progress=False, **FAST)
    assert q.patch.qweight.method == "uq" and q.patch.qweight.group_shape == (1, 16)
    assert q.patch.selection["candidates"] == {}  # a rule, not a comparison
    q = bqq.quantize(patchnet(), bits=2, progress=False, overrides={"patch": {"method": "bqq"}}, **FAST)
    assert q.patch.qweight.method == "bqq" and q.patch.qweight.group_shape == (32, 16)
    q = bqq.quantize(patchnet(), bits=2, method="bqq", progress=False, **FAST)  # explicit: BQQ everywhere
    assert {layer.qweight.method for _, layer in quantized_layers(q)} == {"bqq"}


def test_mixed_model_round_trips_exactly_and_reports(tmp_path, capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 3))
    bqq.quantize(model, bits=2, group_size=None, progress=False, overrides={"2": {"method": "bcq"}}, **FAST)
    methods = {layer.qweight.method for _, layer in quantized_layers(model)}
    assert "bcq" in methods
    x = torch.randn(4, 96, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "mixed.safetensors"
    bqq.save_quantized(model, path)
    torch.manual_seed(5)
    restored = bqq.load_quantized(path, nn.Sequential(nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 3)))
    with torch.no_grad():
        assert torch.equal(restored(x), model(x))
    assert layer_report(restored) == layer_report(model)
    table = format_report(layer_report(model))
    assert table.count("\n") == 3 and "| 2 | bcq | 2 |" in table
    assert cli(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2.weight: bcq" in out and "bits for bcq: code width b" in out
    assert "    2: bcq rel_error=" in out and "(candidates: bcq " in out and "bqq_model_config" not in out


def test_auto_needs_bits_all_candidates_accept():
    with pytest.raises(ValueError, match="needs an integer bits"):
        bqq.quantize(patchnet(), bits=2.5, progress=False)


# --- group sizes -------------------------------------------------------------------------------------

def test_group_size_none_means_one_group_per_layer():
    model = nn.Sequential(nn.Linear(40, 30))
    bqq.quantize(model, bits=2, method="uq", group_size=None, progress=False)
    assert len(model[0].qweight.grid) == 1 and model[0].qweight.group_shape == (30, 40)


# --- the LLM grouping and schedule -------------------------------------------------------------------

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
