"""bqq.quantize (bqq.ptq.quantize) on a non-timm model: what is replaced and kept, include/exclude/overrides, bad
arguments, dtypes, a layer equal to compress of its weight. (Files: test_serialize.py; executors and the cache:
test_runner.py; calibration: test_calibrate.py.)"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

import bqq
from bqq.ptq import QuantizedConv2d, QuantizedLinear, quantized_layers
from bqq.ptq.runner import layer_seed
from tests.helpers import FAST, tiny


def test_quantize_replaces_linear_and_conv_and_keeps_the_rest(images):
    model = tiny()
    ref = model(images)
    norm_before = model.norm.weight.clone()
    q = bqq.quantize(model, bits=3, **FAST)
    assert q is model
    names = {n for n, _ in quantized_layers(q)}
    assert names == {"patch", "head"} | {f"blocks.{i}.{m}" for i in range(2) for m in ("qkv", "proj", "fc1", "fc2")}
    assert isinstance(q.patch, QuantizedConv2d) and isinstance(q.head, QuantizedLinear)
    assert isinstance(q.norm, nn.LayerNorm) and torch.equal(q.norm.weight, norm_before)
    assert q.blocks[0].fc2.bias is None and q.blocks[0].fc1.bias is not None
    assert not any("weight" in n and "norm" not in n for n, _ in q.named_parameters())  # no dense weights kept
    err3 = ((q(images) - ref) ** 2).mean()
    err1 = ((bqq.quantize(tiny(), bits=1, **FAST)(images) - ref) ** 2).mean()
    # 1 stack on 24x24 random layers is noisy (its error straddles ref² over seeds); 3 stacks are not.
    assert err3 < 0.5 * err1 and err3 < 0.5 * (ref**2).mean()


def test_default_groups_follow_the_model_width():
    q = bqq.quantize(tiny(), bits=1, **FAST)
    assert q.blocks[0].qkv.qweight.grid.group_shape == (24, 24)  # embed_dim squares
    assert len(q.blocks[0].fc1.qweight.grid) == 2
    q = bqq.quantize(tiny(), bits=1, group_size=(12, 8), **FAST)
    assert q.blocks[0].proj.qweight.grid.group_shape == (12, 8)


def test_include_exclude_and_overrides():
    q = bqq.quantize(tiny(), bits=2, method="bqq", exclude=["head", "patch"],
                     overrides={"blocks.0.*": {"bits": 4}, "blocks.1.fc?": {"method": "uq", "bits": 3}}, **FAST)
    assert isinstance(q.head, nn.Linear) and isinstance(q.patch, nn.Conv2d)
    assert q.blocks[0].qkv.qweight.bits == 4
    assert (q.blocks[1].fc1.qweight.method, q.blocks[1].fc1.qweight.bits) == ("uq", 3)
    assert (q.blocks[1].qkv.qweight.method, q.blocks[1].qkv.qweight.bits) == ("bqq", 2)
    q = bqq.quantize(tiny(), bits=2, include="blocks.1.*", **FAST)
    assert {n for n, _ in quantized_layers(q)} == {f"blocks.1.{m}" for m in ("qkv", "proj", "fc1", "fc2")}


@pytest.mark.parametrize("kwargs, match", [
    ({"bits": 0}, "bits"),
    ({"bits": 2, "method": "nope"}, "unknown method"),
    ({"bits": 2, "include": "nothing.*"}, "nothing to quantize"),
    ({"bits": 2, "overrides": {"missing": {"bits": 3}}}, "match no"),
    ({"bits": 2, "overrides": {"head": {"bits": 99}}}, "'head'"),
    ({"bits": 2, "sweps": 3}, "sweps"),
    ({"bits": 2, "workers": "many"}, "workers"),
])
def test_bad_arguments_fail_before_any_work(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        bqq.quantize(tiny(), **kwargs)


def test_bad_weights_and_models_are_named():
    model = tiny()
    with torch.no_grad():
        model.blocks[1].proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"blocks\.1\.proj"):
        bqq.quantize(model, bits=2, **FAST)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        bqq.quantize(torch.zeros(3, 3), bits=2)
    with pytest.raises(ValueError, match="wrap"):
        bqq.quantize(nn.Linear(4, 4), bits=2)


def test_bfloat16_model_stays_bfloat16(images):
    q = bqq.quantize(tiny().to(torch.bfloat16), bits=2, **FAST)
    assert q(images.to(torch.bfloat16)).dtype == torch.bfloat16


def test_pretrained_weights_fail_fast_offline(monkeypatch):
    from bqq.compat import import_timm

    timm = import_timm()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(Exception):  # noqa: B017 (hub errors differ between versions)
        timm.create_model("deit_tiny_patch16_224", pretrained=True)
    assert time.time() - start < 30


# --- a layer equals compress of its weight -----------------------------------------------------------

def test_quantized_layer_equals_compress_of_its_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(50, 70), nn.ReLU(), nn.Linear(70, 9))
    w = model[0].weight.detach().clone()
    bqq.quantize(model, bits=2, method="bqq", group_size=(32, 24), progress=False, sweeps=40)
    ref = bqq.compress(w, 2, group_size=(32, 24), seed=layer_seed(0, "0"), sweeps=40)
    got = model[0].qweight
    assert len(got.grid) == 3 * 3 and got.seed == ref.seed
    for key, arr in ref.fields().items():
        assert np.array_equal(got.fields()[key], arr), key
