"""Packed-binary format (v2; v1 files in tests/test_format_v1.py): bit packing, file round trips, bad files."""

import json
import struct

import numpy as np
import pytest

import bqq
from bqq import format as fmt

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


def test_non_bqq_files_are_rejected(tmp_path):
    from safetensors.numpy import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros((2, 2), np.float32)}, plain)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04\x95" + b"not a safetensors file" * 10)  # a pickle-like prefix
    for path in (plain, junk):
        with pytest.raises(bqq.FormatError):
            bqq.load(path)
    with pytest.raises(FileNotFoundError):
        bqq.load(tmp_path / "missing.safetensors")


def test_failed_save_leaves_the_existing_file_intact(saved, monkeypatch):
    before = saved.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.numpy.save_file", explode)
    with pytest.raises(OSError, match="disk full"):
        bqq.save(_quantized("uq"), saved)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]  # no temporary left behind


def test_save_rejects_non_quantized_objects(tmp_path):
    with pytest.raises(TypeError):
        bqq.save(np.zeros(3), tmp_path / "x.safetensors")
    with pytest.raises(TypeError):
        bqq.save({}, tmp_path / "x.safetensors")
