"""The bqq command line: demo, compress (with resume), info, and its error messages."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import bqq
from bqq.cli import main


@pytest.fixture
def matrix_npy(tmp_path):
    path = tmp_path / "w.npy"
    np.save(path, np.random.default_rng(0).standard_normal((40, 30)).astype(np.float32))
    return path


def test_compress_npy_then_info(tmp_path, matrix_npy, capsys):
    out = tmp_path / "out.safetensors"
    assert main(["compress", str(matrix_npy), "--bits", "2", "--group-size", "20x15", "--sweeps", "80",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "bits/weight=" in printed and "mse=" in printed
    q = bqq.load(out)
    assert q.method == "bqq" and q.stacks == 2 and q.group_shape == (20, 15)
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "format bqq.packed v2" in info and "shape=40x30" in info and "bits/weight=" in info
    assert "bits for bqq: stacks p" in info


def test_compress_resumes_finished_stacks(tmp_path, matrix_npy, capsys):
    out = tmp_path / "out.safetensors"
    args = ["compress", str(matrix_npy), "--sweeps", "80", "-o", str(out)]
    assert main([*args, "--bits", "1"]) == 0  # as if a 3-stack run was interrupted after stack 1
    first = bqq.load(out)
    assert main([*args, "--bits", "3"]) == 0
    assert "resuming" in capsys.readouterr().err
    resumed = bqq.load(out)
    assert np.array_equal(resumed.y[0][:1], first.y[0])
    fresh = tmp_path / "fresh.safetensors"
    assert main(["compress", str(matrix_npy), "--sweeps", "80", "--bits", "3", "-o", str(fresh)]) == 0
    assert torch.equal(bqq.load(fresh).dequantize(), resumed.dequantize())


def test_compress_refuses_to_overwrite_other_work(tmp_path, matrix_npy, capsys):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    assert main(["compress", str(matrix_npy), "--method", "uq", "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert main(["compress", str(matrix_npy), "--method", "uq", "-o", str(out), "--force"]) == 0
    assert bqq.load(out).method == "uq"


def test_safetensors_input_needs_a_name_when_ambiguous(tmp_path, capsys):
    src = tmp_path / "model.safetensors"
    save_file({"a.weight": torch.randn(8, 6, dtype=torch.bfloat16), "b.weight": torch.randn(5, 5)}, src)
    out = tmp_path / "out.safetensors"
    assert main(["compress", str(src), "--method", "bcq", "-o", str(out)]) == 2
    assert "a.weight" in capsys.readouterr().err
    assert main(["compress", f"{src}:a.weight", "--method", "bcq", "-o", str(out)]) == 0
    q = bqq.load(out)
    assert q.shape == (8, 6) and q.dtype == "bfloat16"
    assert main(["compress", f"{src}:missing", "--method", "bcq", "-o", str(out), "--force"]) == 2


@pytest.mark.parametrize("argv, message", [
    (["compress", "nope.npy", "-o", "x.safetensors"], "no such file"),
    (["compress", "{npy}", "--bits", "0", "-o", "{out}"], "bits"),
    (["compress", "{npy}", "--method", "uq", "--sweeps", "5", "-o", "{out}"], "--sweeps"),
    (["info", "{npy}"], "not safetensors"),
])
def test_errors_are_reported_not_raised(tmp_path, matrix_npy, capsys, argv, message):
    argv = [a.format(npy=matrix_npy, out=tmp_path / "o.safetensors") for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_demo_runs_every_method(capsys):
    assert main(["demo", "--size", "32", "--bits", "2"]) == 0
    out = capsys.readouterr().out
    for method in ("bqq", "bcq", "uq", "svd"):
        assert f" {method} " in out or f"{method}  " in out
