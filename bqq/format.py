"""The packed-binary storage format, version 2 (specified in ``docs/format.md``; version 1 files still load).

Two layers, both shared by every bqq subpackage (BQQ factors, first-order codes, SLT and GNN masks):

* :func:`pack_bits` / :func:`unpack_bits`: {0,1} arrays packed 8 per uint8 along the **last axis**,
  **little bit order** (element ``8k + i`` of a row is bit ``i`` of byte ``k``); pad bits are zero.
* :func:`write_file` / :func:`read_file`: a safetensors file whose ``__metadata__`` holds the format
  name and version, the bit order, the library version, a JSON manifest of the stored objects and a
  SHA-256 over manifest and tensors. Reading checks all of that before anything is built; nothing is
  unpickled or executed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .version import __version__

FORMAT_NAME = "bqq.packed"
FORMAT_VERSION = 2  # 2: matrix entries carry config_version; a model file holds one grouped matrix per layer
BIT_ORDER = "little"
PACK_AXIS = "last"

_REQUIRED_KEYS = ("format", "format_version", "bit_order", "pack_axis", "library_version", "manifest",
                  "content_sha256")


class FormatError(ValueError):
    """A file is not a valid bqq packed file: truncated, tampered, inconsistent or from the future."""


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack a {0,1} (or bool) array of shape (..., k) into uint8 of shape (..., ceil(k / 8)).

    Raises ValueError if an entry is not 0 or 1.
    """
    arr = np.asarray(bits)
    if arr.ndim == 0:
        raise ValueError("pack_bits needs at least one axis")
    if arr.dtype != np.bool_:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError("pack_bits expects only 0 and 1 entries")
        arr = arr.astype(np.bool_)
    return np.packbits(arr, axis=-1, bitorder=BIT_ORDER)


def unpack_bits(packed: np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: uint8 (..., ceil(count / 8)) -> uint8 {0,1} array (..., count)."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise ValueError(f"packed bits must be uint8, got {packed.dtype}")
    if packed.shape[-1] != packed_length(count):
        raise ValueError(f"packed last axis is {packed.shape[-1]} bytes, expected {packed_length(count)} "
                         f"for {count} bits")
    return np.unpackbits(packed, axis=-1, count=count, bitorder=BIT_ORDER)


def packed_length(count: int) -> int:
    """Bytes needed for ``count`` bits."""
    return -(-count // 8)


def pad_bits_are_zero(packed: np.ndarray, count: int) -> bool:
    """True if the unused high bits of the last byte of every row are zero (a tamper check)."""
    rem = count % 8
    if rem == 0 or packed.size == 0:
        return True
    mask = np.uint8((0xFF << rem) & 0xFF)
    return not np.any(packed[..., -1] & mask)


def checked_planes(packed: np.ndarray, count: int, label: str) -> np.ndarray:
    """A private copy of packed planes read from a file, after checking their pad bits are zero."""
    if not pad_bits_are_zero(packed, count):
        raise ValueError(f"{label} has nonzero pad bits")
    return packed.copy()


def content_digest(manifest: str, tensors: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the manifest text and every tensor's name, dtype, shape and bytes (sorted by name)."""
    h = hashlib.sha256(manifest.encode())
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name])
        h.update(f"\0{name}\0{t.dtype.str}\0{t.shape}\0".encode())
        h.update(t.tobytes())
    return h.hexdigest()


def write_file(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], manifest: Mapping[str, Any],
               extra_metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` and a JSON-able ``manifest`` atomically (a crash never leaves a half file)."""
    from safetensors.numpy import save_file

    manifest_text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    metadata = dict(extra_metadata or {})
    metadata.update({
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "bit_order": BIT_ORDER,
        "pack_axis": PACK_AXIS,
        "library_version": __version__,
        "manifest": manifest_text,
        "content_sha256": content_digest(manifest_text, tensors),
    })
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_file(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, str]]:
    """Read and verify a packed file: returns (tensors, manifest, raw metadata).

    Raises FormatError if the file is truncated, not safetensors, not a bqq file, from a newer format
    version, or if its checksum does not match its content.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    data = path.read_bytes()
    metadata = _read_header_metadata(data, path)
    _check_header(metadata, path)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, OSError) as exc:
        raise FormatError(f"{path}: cannot read tensors ({exc}); the file is truncated or corrupted") from exc
    if content_digest(metadata["manifest"], tensors) != metadata["content_sha256"]:
        raise FormatError(f"{path}: checksum mismatch; the file was modified or corrupted after it was written")
    try:
        manifest = json.loads(metadata["manifest"])
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: manifest is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise FormatError(f"{path}: manifest must be a JSON object")
    return tensors, manifest, metadata


def _read_header_metadata(data: bytes, path: Path) -> dict[str, str]:
    if len(data) < 8:
        raise FormatError(f"{path}: file is {len(data)} bytes, too short to be safetensors (truncated?)")
    header_len = int.from_bytes(data[:8], "little")
    if header_len <= 0 or 8 + header_len > len(data):
        raise FormatError(f"{path}: header length {header_len} exceeds the file size {len(data)}; "
                          "the file is truncated or not safetensors")
    try:
        header = json.loads(data[8:8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: header is not valid JSON; not a safetensors file ({exc})") from exc
    if not isinstance(header, dict):
        raise FormatError(f"{path}: safetensors header must be a JSON object")
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError(f"{path}: no bqq metadata; this is not a file written by bqq.save")
    return metadata


def _check_header(metadata: Mapping[str, str], path: Path) -> None:
    missing = [k for k in _REQUIRED_KEYS if k not in metadata]
    if missing:
        raise FormatError(f"{path}: metadata lacks {missing}; not a bqq packed file or tampered")
    if metadata["format"] != FORMAT_NAME:
        raise FormatError(f"{path}: format is {metadata['format']!r}, expected {FORMAT_NAME!r}")
    try:
        version = int(metadata["format_version"])
    except ValueError as exc:
        raise FormatError(f"{path}: format_version {metadata['format_version']!r} is not an integer") from exc
    if version > FORMAT_VERSION:
        raise FormatError(f"{path}: written with format version {version} (bqq {metadata['library_version']}); "
                          f"this bqq {__version__} reads up to version {FORMAT_VERSION}; upgrade bqq")
    if version < 1:
        raise FormatError(f"{path}: invalid format_version {version}")
    if metadata["bit_order"] != BIT_ORDER or metadata["pack_axis"] != PACK_AXIS:
        raise FormatError(f"{path}: unsupported bit order/axis {metadata['bit_order']}/{metadata['pack_axis']}")
