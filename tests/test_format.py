"""The packed-binary format (bqq.format): bit packing, the header, damaged and forged files, and v1 files that still
load and rebuild exactly what that code rebuilt (re-saved as v2 they round-trip unchanged). Every method's round
trip: tests/methods/test_contract.py; bqq.save / bqq.load themselves: test_io.py."""

import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import bqq
from bqq import format as fmt
from bqq.format import read_file
from tests.helpers import FIXTURES

FAST = {"sweeps": 100}


@pytest.mark.parametrize("count", [1, 7, 8, 9, 63, 64, 65])
def test_pack_unpack_round_trip(count):
    bits = np.random.default_rng(count).integers(0, 2, (3, 5, count)).astype(np.uint8)
    packed = fmt.pack_bits(bits)
    assert packed.shape == (3, 5, -(-count // 8)) and packed.dtype == np.uint8
    assert np.array_equal(fmt.unpack_bits(packed, count), bits)
    assert fmt.pad_bits_are_zero(packed, count)


def test_bit_order_is_little_endian_along_the_last_axis():
    assert fmt.pack_bits(np.array([1, 0, 0, 0, 0, 0, 0, 0])).tolist() == [1]
    assert fmt.pack_bits(np.array([0, 0, 0, 0, 0, 0, 0, 1])).tolist() == [128]
    assert fmt.pack_bits(np.array([[1, 1, 0], [0, 0, 1]])).tolist() == [[3], [4]]
    assert fmt.pack_bits(np.array([0] * 8 + [1])).tolist() == [0, 1]


def test_pack_rejects_non_binary_and_unpack_rejects_wrong_length():
    with pytest.raises(ValueError, match="0 and 1"):
        fmt.pack_bits(np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="bytes"):
        fmt.unpack_bits(np.zeros((2, 3), np.uint8), 8)
    assert not fmt.pad_bits_are_zero(np.array([0b1000], np.uint8), 3)


def _quantized(method, shape=(37, 29), group_size=(16, 12)):
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    opts = FAST if method == "bqq" else {}
    bits = 8 if method == "svd" else 2  # SVD needs 32(m+n)/(mn) bits per weight for rank 1
    return bqq.compress(w, bits=bits, method=method, group_size=group_size, **opts)


def test_header_carries_the_documented_metadata(tmp_path):
    q = _quantized("bqq")
    path = tmp_path / "q.safetensors"
    bqq.save(q, path)
    header = _header(path)
    meta = header["__metadata__"]
    assert meta["format"] == "bqq.packed" and meta["format_version"] == "2"
    assert meta["bit_order"] == "little" and meta["pack_axis"] == "last"
    assert meta["library_version"] == bqq.__version__
    assert meta["method"] == "bqq" and meta["bits"] == "2" and meta["group_shape"] == "[13, 10]"
    manifest = json.loads(meta["manifest"])
    # rows 37 -> 13, 12, 12; cols 29 -> 10, 10, 9; l = round(m n / (m + n))
    assert manifest["objects"]["matrix"]["ranks"] == [[6, 6, 5], [5, 5, 5], [5, 5, 5]]
    assert header["matrix.y.0.0"]["dtype"] == "U8" and header["matrix.y.0.0"]["shape"] == [2, 13, 1]
    assert header["matrix.z.2.2"]["shape"] == [2, 5, 2]  # l = 5 rows (12x9 group), 9 columns -> 2 bytes
    assert header["matrix.scales"]["dtype"] == "F32" and header["matrix.scales"]["shape"] == [3, 3, 2, 3]


def _header(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n])


def _rewrite(path, mutate_header=None, mutate_data=None):
    """Rewrite a safetensors file with a mutated header and/or data section (no checksum update)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header, body = json.loads(data[8:8 + n]), bytearray(data[8 + n:])
    if mutate_header:
        mutate_header(header)
    if mutate_data:
        mutate_data(header, body)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(body))


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "q.safetensors"
    bqq.save(_quantized("bqq"), path)
    return path


@pytest.mark.parametrize("keep", [0, 5, 8, 100, -1])
def test_truncated_file_is_rejected(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[:keep] if keep >= 0 else data[:-3])
    with pytest.raises(bqq.FormatError):
        bqq.load(saved)


def test_flipped_data_byte_is_rejected(saved):
    def flip(header, body):
        start = header["matrix.y.1.1"]["data_offsets"][0]
        body[start] ^= 0x01

    _rewrite(saved, mutate_data=flip)
    with pytest.raises(bqq.FormatError, match="checksum"):
        bqq.load(saved)


def test_future_version_is_rejected_with_an_upgrade_hint(saved):
    _rewrite(saved, mutate_header=lambda h: h["__metadata__"].update(format_version="3"))
    with pytest.raises(bqq.FormatError, match="upgrade"):
        bqq.load(saved)


@pytest.mark.parametrize("key", ["format", "manifest", "content_sha256", "bit_order"])
def test_missing_or_foreign_metadata_is_rejected(saved, key):
    _rewrite(saved, mutate_header=lambda h: h["__metadata__"].pop(key))
    with pytest.raises(bqq.FormatError):
        bqq.load(saved)


def _forge(path, edit_manifest=None, edit_tensors=None):
    """Re-save a tampered but correctly checksummed file, so only structural validation can catch it."""
    tensors, manifest, meta = fmt.read_file(path)
    tensors = {k: v.copy() for k, v in tensors.items()}
    if edit_manifest:
        edit_manifest(manifest)
    if edit_tensors:
        edit_tensors(tensors)
    extra = {k: meta[k] for k in ("method", "bits", "group_shape")}
    fmt.write_file(path, tensors, manifest, extra_metadata=extra)


@pytest.mark.parametrize("edit", [
    lambda m: m["objects"]["matrix"].update(shape=[38, 29]),
    lambda m: m["objects"]["matrix"].update(bits=3),
    lambda m: m["objects"]["matrix"].update(bits=1.5),
    lambda m: m["objects"]["matrix"].update(method="nope"),
    lambda m: m["objects"]["matrix"].update(ranks=[[6, 6, 7]] * 3),
    lambda m: m["objects"]["matrix"].update(row_sizes=[13, 12, 13]),
    lambda m: m["objects"]["matrix"].update(dtype="int8"),
    lambda m: m["objects"]["matrix"]["config"].update(sweeps=-4),
    lambda m: m["objects"]["matrix"]["config"].update(evil="__import__('os')"),
    lambda m: m.update(container="pickle"),
    lambda m: m["objects"].update(extra=m["objects"]["matrix"]),
])
def test_forged_inconsistent_manifest_is_rejected(saved, edit):
    _forge(saved, edit_manifest=edit)
    with pytest.raises(bqq.FormatError):
        bqq.load(saved)


@pytest.mark.parametrize("edit", [
    lambda t: t.pop("matrix.z.0.1"),
    lambda t: t.update({"matrix.extra": np.zeros(3, np.uint8)}),
    lambda t: t.update({"matrix.scales": t["matrix.scales"].astype(np.float64)}),
    lambda t: t.update({"matrix.y.0.0": t["matrix.y.0.0"][:, :-1]}),
    lambda t: t["matrix.scales"].__setitem__((0, 0, 0, 0), np.nan),
    lambda t: t["matrix.z.1.1"].__setitem__((0, 0, 1), 0xFF),  # 9 columns: byte 1 has 7 pad bits
])
def test_forged_inconsistent_tensors_are_rejected(saved, edit):
    _forge(saved, edit_tensors=edit)
    with pytest.raises(bqq.FormatError):
        bqq.load(saved)


# --- format v1: files written by bqq at commit 056cae1 (tests/fixtures/v1/make_fixtures.py) still load

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
