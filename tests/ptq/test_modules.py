"""QuantizedLinear / QuantizedConv2d / QuantizedWeight (bqq.ptq.modules): the packed-kernel forward of quantized
layers, its layout cache, dtypes and devices, torch.compile."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bqq
from bqq.ptq import quantized_layers
from bqq.ptq.modules import trainable_scalars
from tests.helpers import rel_err

# The default CPU backend runs the register-table kernel for a few tokens: its 16-bit tables round
# (tests/kernels/cpu/test_table_matmul.py bounds that error).
TABLE_TOLERANCE = 5e-4


def test_conv_kernel_path_with_stride_padding_dilation():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1))
    model = nn.Sequential(conv).eval()
    bqq.quantize(model, bits=1, method="bqq", sweeps=30)
    layer = model[0]
    x = torch.randn(3, 4, 9, 7)
    with torch.no_grad():
        out = layer(x)
        layer.backend = "reference"
        ref = layer(x)
    assert out.shape == ref.shape == conv(x).shape
    assert rel_err(out, ref) < TABLE_TOLERANCE


def test_reloaded_model_gives_identical_kernel_outputs(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5)).eval()
    bqq.quantize(model, bits=2, method="bqq", group_size=16, sweeps=40)
    bqq.save_quantized(model, tmp_path / "m.safetensors")
    torch.manual_seed(1)
    fresh = bqq.load_quantized(tmp_path / "m.safetensors", nn.Sequential(nn.Linear(20, 30), nn.ReLU(),
                                                                          nn.Linear(30, 5)).eval())
    x = torch.randn(7, 20)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    assert all(layer.kernel_layout() is not None for _, layer in quantized_layers(fresh))


def test_calibration_refit_invalidates_the_layout():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12)).eval()
    bqq.quantize(model, bits=2, method="bqq", sweeps=30)
    layer = model[0]
    x = torch.randn(5, 16)
    before = layer(x).detach()
    with trainable_scalars(model) as params:
        with torch.no_grad():
            params[0].add_(0.5)  # change the scalars
    after = layer(x).detach()
    layer.backend = "reference"
    assert not torch.equal(before, after)
    assert rel_err(after, layer(x).detach()) < TABLE_TOLERANCE


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_quantized_model(dtype):
    """`.half()` / `.to(torch.bfloat16)` of a quantized model: outputs in that dtype, close to the fp32 ones."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.GELU(), nn.Flatten(1),
                          nn.Linear(8 * 4 * 4, 10)).eval()
    bqq.quantize(model, bits=2, method="bqq", group_size=32, sweeps=20, progress=False)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
        model.to(dtype)
        layers = [layer for _, layer in quantized_layers(model)]
        assert all(layer.bias.dtype == dtype and layer.kernel_layout().r.dtype == torch.float32 for layer in layers)
        out = model(x.to(dtype))
        for layer in layers:
            layer.backend = "reference"
        dense = model(x.to(dtype))
    assert out.dtype == dense.dtype == dtype
    tolerance = 2e-3 if dtype == torch.float16 else 2e-2  # a few roundings to the half type along the way
    assert rel_err(out, ref) < tolerance and rel_err(dense, ref) < tolerance


def test_quantized_layers_move_their_layout_with_the_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12)).eval()
    bqq.quantize(model, bits=2, method="bqq", sweeps=20, progress=False)
    layer = model[0]
    assert layer.kernel_layout().device.type == "cpu"
    model.to("meta")  # the layout follows device moves (here to meta, which any machine has) ...
    assert layer.kernel_layout().device.type == "meta" and layer.bias.device.type == "meta"
    assert model(torch.empty(3, 16, device="meta")).shape == (3, 12)
    layer.invalidate_kernel_layout()  # ... also when it is rebuilt after the move
    assert layer.kernel_layout().device.type == "meta"
    model.half()  # dtype casts leave the packed bits and fp32 scalars alone, where they are
    assert layer.kernel_layout().r.dtype == torch.float32 and layer.bias.dtype == torch.float16
    assert layer.kernel_layout().device.type == "meta"


def test_torch_compile_of_a_quantized_vit_equals_eager():
    from bqq.compat import import_timm

    timm = import_timm()
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                              num_classes=7).eval()
    bqq.quantize(model, bits=2, method="bqq", progress=False, sweeps=10, polish_rounds=1)
    assert all(layer.uses_kernel() for _, layer in quantized_layers(model))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model)(x)
    # Inductor's fused norms round differently from eager: the register tables of the 3-token head then
    # round a few entries the other way (one table step, ~1e-5 of the block's largest sum).
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-4)
