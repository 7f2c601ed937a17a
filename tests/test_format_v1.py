"""Files written by format v1 (bqq at commit 056cae1: tests/fixtures/v1/make_fixtures.py) still load
and rebuild exactly what that code rebuilt; re-saved as v2 they round-trip unchanged."""


import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import bqq
from bqq.format import read_file
from tests.helpers import FIXTURES

V1 = FIXTURES / "v1"


@pytest.fixture(scope="module")
def expected():
    return load_file(V1 / "expected.safetensors")


def v1_model() -> nn.Module:
    """The architecture the v1 model file was saved from (random weights: load fills them)."""
    return nn.Sequential(nn.Conv2d(1, 8, 4, stride=4), nn.Flatten(), nn.Linear(8 * 4 * 4, 20), nn.GELU(),
                         nn.Linear(20, 5))


@pytest.mark.parametrize("method", ["bqq", "uq", "bcq", "svd"])
def test_v1_matrix_files_load_and_dequantize_identically(tmp_path, expected, method):
    path = V1 / f"matrix_{method}.safetensors"
    assert read_file(path)[2]["format_version"] == "1"
    q = bqq.load(path)
    assert q.method == method and torch.equal(q.dequantize(), expected[f"matrix_{method}"])
    bqq.save(q, tmp_path / "v2.safetensors")
    assert read_file(tmp_path / "v2.safetensors")[2]["format_version"] == "2"
    assert torch.equal(bqq.load(tmp_path / "v2.safetensors").dequantize(), expected[f"matrix_{method}"])


def test_v1_mapping_file_loads(expected):
    objects = bqq.load(V1 / "matrix_mapping.safetensors")
    assert sorted(objects) == ["bcq", "bqq", "svd", "uq"]
    for name, q in objects.items():
        assert torch.equal(q.dequantize(), expected[f"matrix_{name}"])


def test_v1_model_file_loads_with_one_grouped_weight_per_layer(tmp_path, expected):
    model = bqq.load_quantized(V1 / "model.safetensors", v1_model())
    layers = dict(bqq.ptq.quantized_layers(model))
    assert sorted(layers) == ["0", "2", "4"]
    assert len(layers["2"].qweight.grid) == 3 * 2  # 20x128 in 8x64 groups (balanced: 7+7+6 rows)
    assert layers["4"].qweight.method == "uq" and layers["2"].qweight.method == "bqq"
    with torch.no_grad():
        default = model(expected["model_input"])  # the register tables at a few tokens: 16-bit rounding
        for layer in layers.values():
            layer.backend = "numba-exact"  # the kernel that computed the expected output
        out = model(expected["model_input"])
    # Same codes; the CPU kernel's float32 sums follow the machine's SIMD width, so another machine's
    # output may differ in the last bits (seen: 1.5e-8); on one machine it is exact (the v2 round trip below).
    torch.testing.assert_close(out, expected["model_output"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(default, out, rtol=1e-3, atol=1e-4)
    bqq.save_quantized(model, tmp_path / "v2.safetensors")
    _, manifest, _ = read_file(tmp_path / "v2.safetensors")
    assert sorted(manifest["objects"]) == ["0.weight", "2.weight", "4.weight"]
    again = bqq.load_quantized(tmp_path / "v2.safetensors", v1_model())
    with torch.no_grad():
        assert torch.equal(again(expected["model_input"]), default)
