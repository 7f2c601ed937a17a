"""save_quantized / load_quantized (bqq.ptq.serialize): one manifest entry per quantized layer."""

from __future__ import annotations

import pytest
import torch

import bqq
from bqq.format import read_file
from bqq.ptq import QuantizedConv2d, quantized_layers
from tests.helpers import FAST, TinyTransformer, model_outputs, tiny


def test_deit_s_shaped_model_saves_one_manifest_entry_per_layer(tmp_path):
    from bqq.compat import import_timm

    timm = import_timm()
    make = lambda: timm.create_model("deit_small_patch16_224", pretrained=False, img_size=32, depth=1,  # noqa: E731
                                     num_classes=10).eval()
    model = make()
    bqq.quantize(model, bits=1, method="bqq", progress=False, sweeps=5, polish_rounds=1)
    names = {n for n, _ in quantized_layers(model)}
    assert names == {"patch_embed.proj", "blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1",
                     "blocks.0.mlp.fc2", "head"}
    assert len(model.blocks[0].mlp.fc1.qweight.grid) == 4  # 1536x384 in 384x384 groups
    bqq.save_quantized(model, tmp_path / "vit.safetensors")
    _, manifest, _ = read_file(tmp_path / "vit.safetensors")
    assert sorted(manifest["objects"]) == sorted(f"{n}.weight" for n in names)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(bqq.load_quantized(tmp_path / "vit.safetensors", make())(x), model(x))


def test_load_rejects_a_different_architecture_and_a_tampered_file(tmp_path):
    q = bqq.quantize(tiny(), bits=1, **FAST)
    path = tmp_path / "model.safetensors"
    bqq.save_quantized(q, path)
    with pytest.raises(ValueError):
        bqq.load_quantized(path, TinyTransformer(d=16))
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(bqq.FormatError):
        bqq.load_quantized(path, tiny())


def test_timm_vit_round_trip(tmp_path):
    from bqq.compat import import_timm

    timm = import_timm()
    torch.manual_seed(0)
    make = lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,  # noqa: E731
                                     embed_dim=48, depth=2, num_heads=2, num_classes=7).eval()
    model = make()
    x = torch.randn(2, 3, 32, 32)
    q = bqq.quantize(model, bits=2, **FAST)
    assert isinstance(q.patch_embed.proj, QuantizedConv2d)
    assert q.head.qweight.grid.group_shape == (7, 48)  # head groups: 100x96, clipped
    assert q.blocks[0].attn.qkv.qweight.grid.group_shape == (48, 48)  # embed_dim squares
    out = model_outputs(q, x)
    bqq.save_quantized(q, tmp_path / "vit.safetensors")
    torch.manual_seed(1)
    assert torch.equal(model_outputs(bqq.load_quantized(tmp_path / "vit.safetensors", make()), x), out)
