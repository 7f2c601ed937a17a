"""bqq.config: the configuration objects of bqq.quantize, the keyword form that builds them, their
validation, their versioned JSON form and its round trip through saved models."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch

import bqq
from bqq.cli import main as cli
from bqq.config import KEEP, LayerConfig, LayerOverride, QuantizeConfig, RunConfig
from bqq.ptq import quantized_layers
from tests.helpers import FAST, assert_same, tiny

OVERRIDES = {"blocks.0.*": {"bits": 3, "sweeps": 40}, "blocks.1.fc?": {"method": "uq", "bits": 4}}


def typed_config() -> QuantizeConfig:
    return QuantizeConfig(
        layer=LayerConfig(method="bqq", bits=2, group_size=12, options=FAST),
        overrides={"blocks.0.*": LayerOverride(bits=3, options={"sweeps": 40}),
                   "blocks.1.fc?": LayerOverride(method="uq", bits=4)},
        exclude=("head",), seed=3)


def test_keyword_form_builds_the_same_config():
    keywords = QuantizeConfig.from_kwargs(2, method="bqq", group_size=12, overrides=OVERRIDES, exclude="head",
                                          seed=3, **FAST)
    assert keywords == typed_config()
    assert QuantizeConfig.from_kwargs() == QuantizeConfig()  # the defaults agree
    assert QuantizeConfig().layer == LayerConfig("auto", 2, "paper", {})


def test_config_and_keywords_quantize_identically():
    by_config = bqq.quantize(tiny(), typed_config(), run=bqq.RunConfig(progress=False))
    by_keywords = bqq.quantize(tiny(), bits=2, method="bqq", group_size=12, overrides=OVERRIDES, exclude="head",
                               seed=3, progress=False, **FAST)
    layers = dict(quantized_layers(by_keywords))
    assert set(layers) == {n for n, _ in quantized_layers(by_config)} and "head" not in layers
    for name, layer in quantized_layers(by_config):
        assert_same(layer.qweight, layers[name].qweight)
    assert by_config.bqq_config == by_keywords.bqq_config == typed_config()
    assert (layers["blocks.0.qkv"].qweight.bits, layers["blocks.1.fc1"].qweight.method) == (3, "uq")
    assert layers["blocks.1.qkv"].qweight.bits == 2


def test_a_number_is_bits():
    a = bqq.quantize(tiny(), 2, method="uq", progress=False)
    b = bqq.quantize(tiny(), bits=2, method="uq", progress=False)
    assert a.bqq_config == b.bqq_config
    for (_, x), (_, y) in zip(quantized_layers(a), quantized_layers(b), strict=True):
        assert_same(x.qweight, y.qweight)


@pytest.mark.parametrize("call, match", [
    (lambda m: bqq.quantize(m, QuantizeConfig(), bits=3), "not both"),
    (lambda m: bqq.quantize(m, QuantizeConfig(), rank_scale=1.5), "not both"),
    (lambda m: bqq.quantize(m, run=RunConfig(), workers=2), "not both"),
    (lambda m: bqq.quantize(m, 2, bits=3), "bits given twice"),
    (lambda m: bqq.quantize(m, "2"), "QuantizeConfig or a number"),
    (lambda m: bqq.quantize(m, run={"workers": 2}), "RunConfig"),
])
def test_config_and_keywords_do_not_mix(call, match):
    with pytest.raises(TypeError, match=match):
        call(tiny())


@pytest.mark.parametrize("make, error, match", [
    (lambda: LayerConfig(method="nope"), ValueError, "unknown method 'nope'"),
    (lambda: LayerConfig(method="uq", bits=0), ValueError, "out of range"),
    (lambda: LayerConfig(bits="2"), ValueError, "bits must be a number"),
    (lambda: LayerConfig(bits=True), ValueError, "bits must be a number"),
    (lambda: LayerConfig(group_size=0), ValueError, "group_size"),
    (lambda: LayerConfig(group_size=(4, 4, 4)), ValueError, "group_size"),
    (lambda: LayerConfig(options={"sweps": 3}), TypeError, "sweps"),
    (lambda: LayerConfig(method="uq", options={"rank_scale": 1.5}), TypeError, "rank_scale"),
    (lambda: LayerOverride(group_size="paper"), ValueError, "whole model"),
    (lambda: LayerOverride(bits=float("nan")), ValueError, "bits"),
    (lambda: QuantizeConfig(layer={"bits": 2}), TypeError, "LayerConfig"),
    (lambda: QuantizeConfig(overrides={"head": 4}), ValueError, "override"),
    (lambda: QuantizeConfig(include=3), ValueError, "include"),
    (lambda: QuantizeConfig(fold_bn="yes"), ValueError, "fold_bn"),
    (lambda: QuantizeConfig(seed=-1), ValueError, "seed"),
    (lambda: RunConfig(workers=0), ValueError, "workers"),
    (lambda: RunConfig(workers=True), ValueError, "workers"),
    (lambda: RunConfig(progress="yes"), ValueError, "progress"),
    (lambda: RunConfig(cache_dir=3), ValueError, "cache_dir"),
    (lambda: RunConfig(device=0), ValueError, "device"),
])
def test_bad_settings_are_named(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_override_options_merge_unless_the_method_changes():
    base = LayerConfig("bqq", 2, None, {"sweeps": 50, "rank_scale": 1.5})
    same = LayerOverride(bits=3, options={"sweeps": 70}).apply_to(base)
    assert same == LayerConfig("bqq", 3, None, {"sweeps": 70, "rank_scale": 1.5})
    other = LayerOverride(method="bcq", options={"rounds": 5}).apply_to(base)
    assert other == LayerConfig("bcq", 2, None, {"rounds": 5})  # BQQ's options do not follow to BCQ
    with pytest.raises(TypeError, match="rank_scale"):
        LayerOverride(options={"rank_scale": 2.0}).apply_to(LayerConfig("uq"))
    config = QuantizeConfig(base, {"blocks.*": LayerOverride(bits=3), "blocks.1.*": LayerOverride(bits=4)})
    assert config.layer_config("blocks.1.qkv") == (replace_bits(base, 4), ["blocks.*", "blocks.1.*"])
    assert config.layer_config("head") == (base, [])


def replace_bits(layer: LayerConfig, bits: float) -> LayerConfig:
    return LayerConfig(layer.method, bits, layer.group_size, layer.options)


def test_an_override_that_does_not_fit_its_layer_names_the_layer():
    with pytest.raises(TypeError, match=r"'blocks\.0\.qkv'.*rank_scale"):
        bqq.quantize(tiny(), QuantizeConfig(LayerConfig("uq"), {"blocks.0.qkv": {"rank_scale": 1.5}}))


def test_json_round_trip_keeps_order_and_types():
    config = typed_config()
    data = json.loads(json.dumps(config.to_dict()))
    assert data["version"] == QuantizeConfig.VERSION == 1
    assert [p for p, _ in data["overrides"]] == ["blocks.0.*", "blocks.1.fc?"]  # applied in this order
    assert QuantizeConfig.from_dict(data) == config
    grouped = QuantizeConfig(LayerConfig("uq", 4, (8, 16)), {"x": LayerOverride(group_size=None)})
    back = QuantizeConfig.from_dict(json.loads(json.dumps(grouped.to_dict())))
    assert back == grouped and back.layer.group_size == (8, 16) and back.overrides["x"].group_size is None
    assert back.overrides["x"].bits is KEEP


@pytest.mark.parametrize("change, match", [
    ({"version": 2}, "newer"),
    ({"version": 0}, "positive"),
    ({"colour": "red"}, "colour"),
    ({"overrides": {"head": {}}}, "pairs"),
    ({"layer": {"bitz": 2}}, "bitz"),
    ({"layer": {"method": "nope"}}, "nope"),
])
def test_from_dict_rejects_what_it_cannot_read(change, match):
    with pytest.raises(ValueError, match=match):
        QuantizeConfig.from_dict({**typed_config().to_dict(), **change})


def test_numpy_bits_are_saved_as_python_numbers():
    import numpy as np

    config = QuantizeConfig(LayerConfig("uq", np.int64(3)), {"head": LayerOverride(bits=np.float32(4))})
    assert type(config.layer.bits) is int and type(config.overrides["head"].bits) is float
    assert QuantizeConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_configs_copy_and_pickle():
    config = QuantizeConfig(overrides={"head": LayerOverride(bits=4)})
    for twin in (copy.deepcopy(config), pickle.loads(pickle.dumps(config))):
        assert twin == config and twin.overrides["head"].method is KEEP
    with pytest.raises(AttributeError):
        config.seed = 1  # frozen


def test_saved_models_record_their_config(tmp_path, capsys):
    model = bqq.quantize(tiny(), typed_config(), run=RunConfig(progress=False))
    config_path = bqq.save_quantized(model, tmp_path / "m.safetensors")
    assert json.loads(config_path.read_text())["quantize_config"] == typed_config().to_dict()
    assert cli(["info", str(tmp_path / "m.safetensors")]) == 0
    printed = capsys.readouterr().out.split("quantize_config: ", 1)[1].splitlines()[0]
    assert QuantizeConfig.from_dict(json.loads(printed)) == typed_config()
    loaded = bqq.load_quantized(tmp_path / "m.safetensors", tiny(seed=1))
    assert loaded.bqq_config == typed_config()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_hf_checkpoints_record_their_config(tmp_path):
    pytest.importorskip("transformers")
    from bqq.compat import import_transformers

    tr = import_transformers()
    torch.manual_seed(0)
    config = tr.LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    model = tr.LlamaForCausalLM(config).eval()
    settings = QuantizeConfig(LayerConfig("uq", 2, None), {"*.mlp.*": LayerOverride(bits=3)})
    bqq.quantize(model, settings, run=RunConfig(progress=False))
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["quantize_config"] == settings.to_dict()
    assert bqq.load_quantized(tmp_path).bqq_config == settings
