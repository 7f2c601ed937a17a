"""bqq.save / bqq.load (bqq.io): atomic saves, what they accept, files that are not bqq files.
(Every method's round trip: tests/methods/test_contract.py; the packed format itself: test_format.py.)"""

import numpy as np
import pytest

import bqq


@pytest.fixture
def saved(tmp_path):
    """A saved grouped BQQ matrix."""
    path = tmp_path / "q.safetensors"
    w = np.random.default_rng(0).standard_normal((37, 29)).astype(np.float32)
    bqq.save(bqq.compress(w, bits=2, group_size=(16, 12), sweeps=100), path)
    return path


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
        bqq.save(bqq.compress(np.ones((3, 4), np.float32), bits=2, method="uq"), saved)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]  # no temporary left behind


def test_save_rejects_non_quantized_objects(tmp_path):
    with pytest.raises(TypeError):
        bqq.save(np.zeros(3), tmp_path / "x.safetensors")
    with pytest.raises(TypeError):
        bqq.save({}, tmp_path / "x.safetensors")
