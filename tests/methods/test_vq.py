"""Registry methods added for the matrix benchmark: k-means VQ ("vq"), E8 LVQ ("lvq"), SVD with quantized factors
("svdq")."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import bqq
from bqq.methods.codes import pack_codes, unpack_codes
from bqq.methods.lattice import chunk_count, e8_roots
from bqq.methods.svdq import rank_for_budget
from bqq.methods.vq import centroids_for_budget, index_bits, kmeans, vq_bits

# (method, options) pairs: every configuration the benchmark uses.


def gaussian(shape: tuple[int, int], seed: int = 1) -> np.ndarray:
    w = np.random.default_rng(seed).standard_normal(shape)
    return (w - w.mean()) / w.std()


def mse(q: bqq.QuantizedMatrix, w: np.ndarray) -> float:
    return float(((q.dequantize().double().numpy() - w) ** 2).mean())


# --- shared behaviour ------------------------------------------------------------------------------


def test_bad_settings_are_rejected():
    w = gaussian((16, 16))
    for method, opts, name in [("vq", {"centroid_bits": 16}, "centroid_bits"), ("vq", {"restarts": 0}, "restarts"),
                               ("lvq", {"scale_bits": 0}, "scale_bits"), ("svdq", {"factor_bits": 9}, "factor_bits"),
                               ("svdq", {"grid_points": 1}, "grid_points")]:
        with pytest.raises(ValueError, match=name):
            bqq.compress(w, bits=2, method=method, **opts)
    with pytest.raises(ValueError, match="integer bits"):
        bqq.compress(w, bits=1.5, method="lvq")


def test_packed_codes_round_trip():
    rng = np.random.default_rng(0)
    for bits, count in [(0, 13), (1, 8), (3, 17), (9, 300)]:
        codes = rng.integers(0, 2**bits, size=(4, count))
        packed = pack_codes(codes, bits)
        assert packed.shape == (bits, 4, -(-count // 8))
        assert np.array_equal(unpack_codes(packed, count), codes)


# --- VQ --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cb", [32, 8, 4, 1])
@pytest.mark.parametrize("shape", [(128, 128), (100, 30), (7, 300)])
@pytest.mark.parametrize("bits", [0.5, 1, 2.5, 4])
def test_vq_centroid_count_is_the_largest_that_fits(cb, shape, bits):
    m, n = shape
    k = centroids_for_budget(bits, shape, cb)
    fits = [c for c in range(1, m + 1) if vq_bits(c, shape, cb) <= bits * m * n]
    assert k == (max(fits) if fits else 0)


def test_vq_budget_too_small_raises():
    with pytest.raises(ValueError, match="cannot hold one 32-bit centroid"):
        bqq.compress(gaussian((64, 64)), bits=0.4, method="vq")


def test_vq_exact_for_few_distinct_rows():
    """A matrix with 3 distinct rows is reproduced (to FP32 rounding) as soon as K >= 3."""
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((3, 40))
    w = rows[rng.integers(0, 3, size=60)]
    q = bqq.compress(w, bits=2, method="vq")  # K = 5 here
    assert q.counts[0] >= 3
    np.testing.assert_allclose(q.dequantize().double().numpy(), w, rtol=1e-6, atol=1e-6)


def test_vq_kmeans_beats_its_start_and_more_restarts_do_not_hurt():
    x = gaussian((200, 16), seed=5)

    def error(c):
        d = ((x[:, None, :] - c[None]) ** 2).sum(axis=-1)
        return d.min(axis=1).sum()

    one = kmeans(x, 12, 100, 1, [[0, 0, 0]])
    three = kmeans(x, 12, 100, 3, [[0, 0, r] for r in range(3)])
    assert error(three) <= error(one)
    # A Lloyd fixed point: every centroid is the mean of the rows nearest to it.
    labels = ((x[:, None, :] - three[None]) ** 2).sum(axis=-1).argmin(axis=1)
    for j in range(12):
        np.testing.assert_allclose(three[j], x[labels == j].mean(axis=0), atol=1e-12)


def test_vq_rows_use_the_nearest_stored_centroid():
    w = gaussian((90, 24), seed=4)
    for cb in (32, 4):
        q = bqq.compress(w, bits=3, method="vq", centroid_bits=cb)
        table, labels = q.table(0), q.labels(0)
        d = ((w[:, None, :] - table[None]) ** 2).sum(axis=-1)
        assert np.array_equal(labels, d.argmin(axis=1))


def test_vq_index_width():
    assert [index_bits(k) for k in (1, 2, 3, 4, 5, 256, 257)] == [0, 1, 2, 2, 3, 8, 9]
    q = bqq.compress(gaussian((300, 20)), bits=16, method="vq", centroid_bits=8)  # K > 256: 9 index planes
    assert q.counts[0] > 256 and q.fields()["index.0.0"].shape == (9, 38)


def test_vq_seed_changes_the_start():
    w = gaussian((120, 30), seed=8)
    a = bqq.compress(w, bits=2, method="vq", restarts=1, seed=1)
    b = bqq.compress(w, bits=2, method="vq", restarts=1, seed=2)
    assert not np.array_equal(a.centroids[0], b.centroids[0])


# --- LVQ -------------------------------------------------------------------------------------------

def test_e8_roots():
    roots = e8_roots()
    assert roots.shape == (240, 8)
    assert np.allclose((roots**2).sum(axis=1), 2.0)
    assert len({tuple(r) for r in roots}) == 240
    assert {tuple(-r) for r in roots} == {tuple(r) for r in roots}  # closed under negation
    gram = roots @ roots.T
    assert set(np.unique(gram)) <= {-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0} and set(np.unique(gram)) >= {-2.0, 2.0}
    assert (roots[:128] ** 2 == 0.25).all() and ((roots[:128] < 0).sum(axis=1) % 2 == 0).all()
    assert np.array_equal(roots[128], [-1, -1, 0, 0, 0, 0, 0, 0]) and np.array_equal(roots[239], [0] * 6 + [1, 1])


def test_lvq_scaled_roots_are_exact():
    """Chunks that are one scale times a root are rebuilt exactly by one stage."""
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 240, size=30)
    w = (1.75 * e8_roots()[idx]).reshape(24, 10)
    q = bqq.compress(w, bits=1, method="lvq")
    assert np.array_equal(q.roots[0][0], idx)
    np.testing.assert_allclose(q.dequantize().double().numpy(), w, atol=1e-6)


def test_lvq_padding_and_chunks():
    w = gaussian((13, 7))  # 91 weights: 12 chunks, the last padded with 5 zeros
    q = bqq.compress(w, bits=2, method="lvq", scale_bits=3)
    assert chunk_count((13, 7)) == 12
    assert q.fields()["roots.0.0"].shape == (2, 12) and q.fields()["scodes.0.0"].shape == (2, 3, 2)
    assert q.total_bits == 2 * (12 * 11 + 64)


def test_lvq_more_scale_bits_help():
    w = gaussian((64, 64), seed=3)
    errors = [mse(bqq.compress(w, bits=2, method="lvq", scale_bits=s), w) for s in (1, 2, 4)]
    assert errors[0] > errors[1] > errors[2], errors


# --- SVDQ ------------------------------------------------------------------------------------------

def test_svdq_rank_formula():
    assert rank_for_budget(2, (128, 128), 8) == math.floor((2 * 128 * 128 - 128) / (8 * 256))
    assert rank_for_budget(4, (64, 48), 4) == math.floor((4 * 64 * 48 - 128) / (4 * 112))
    assert rank_for_budget(1000, (10, 6), 4) == 6  # capped at min(m, n)
    with pytest.raises(ValueError, match="rank 0"):
        bqq.compress(gaussian((16, 16)), bits=0.5, method="svdq")


def test_svdq_8_bit_factors_are_close_to_the_truncated_svd(low_rank_noise):
    """On a skewed spectrum 8-bit factors lose little against FP32 factors of the same rank."""
    w = low_rank_noise
    q = bqq.compress(w, bits=2, method="svdq")
    s = np.linalg.svd(w, compute_uv=False)
    tail = (s[q.ranks[0]:] ** 2).sum() / w.size
    assert tail <= mse(q, w) < 1.05 * tail


@pytest.mark.parametrize(("shape", "outlier"), [((96, 96), False), ((128, 512), True)])
def test_svdq_is_no_worse_than_plain_rounding(shape, outlier):
    """SVDQ keeps the better right factor: refitted (wins on a Gaussian) or the SVD's own (wins with an outlier)."""
    from bqq.methods.codes import dequantize_codes, uniform_codes
    from bqq.methods.svd import truncated_svd

    w = gaussian(shape, seed=9)
    if outlier:  # one weight of 150 standard deviations, like MiniLM's FFN output matrix
        rng = np.random.default_rng(1)
        w[rng.integers(shape[0]), rng.integers(shape[1])] = 150.0
    q = bqq.compress(w, bits=2, method="svdq", factor_bits=4)
    r = q.ranks[0]
    us, vt = truncated_svd(w, r)
    root = np.sqrt(np.linalg.norm(us, axis=0))
    lq = dequantize_codes(*uniform_codes(us / root, 4, 100))
    plain = ((lq @ dequantize_codes(*uniform_codes(vt * root[:, None], 4, 100)) - w) ** 2).mean()
    refit = np.linalg.lstsq(lq, w, rcond=None)[0]
    refitted = ((lq @ dequantize_codes(*uniform_codes(refit, 4, 100)) - w) ** 2).mean()
    assert mse(q, w) == pytest.approx(min(plain, refitted), rel=1e-6)
    assert (refitted < plain) != outlier  # each candidate wins one of the two cases


# --- validation behind the checksum -----------------------------------------------------------------

def _rebuild(q: bqq.QuantizedMatrix, info_changes: dict | None = None, **changes: np.ndarray):
    fields = {**{k: v.copy() for k, v in q.fields().items()}, **changes}
    info = {**json.loads(json.dumps(q.info())), **(info_changes or {})}
    return type(q).from_fields(info, q.grid, fields)


def test_vq_index_beyond_centroids_is_rejected():
    q = bqq.compress(gaussian((40, 24)), bits=3, method="vq")  # K = 3: 2 index bits, code 3 is invalid
    assert q.counts == [3]
    packed = q.fields()["index.0.0"].copy()
    _rebuild(q, **{"index.0.0": packed})
    packed[:, 0] |= 0x01  # row 0 gets index 3
    with pytest.raises(ValueError, match="row index"):
        _rebuild(q, **{"index.0.0": packed})


@pytest.mark.parametrize(("method", "opts", "name"), [("vq", {"centroid_bits": 4}, "ccodes.0.0"),
                                                      ("svdq", {"factor_bits": 4}, "r.0.0"),
                                                      ("lvq", {}, "scodes.0.0")])
def test_nonzero_pad_bits_are_rejected(method, opts, name):
    q = bqq.compress(gaussian((40, 44)), bits=2, method=method, **opts)
    packed = q.fields()[name].copy()
    packed[..., -1] |= 0x80
    with pytest.raises(ValueError, match="pad bits"):
        _rebuild(q, **{name: packed})


@pytest.mark.parametrize(("method", "opts", "name", "value", "message"), [
    ("vq", {}, "centroids.0.0", np.nan, "NaN"), ("vq", {"centroid_bits": 4}, "scale", -1.0, ">= 0"),
    ("lvq", {}, "zero", np.inf, "NaN or Inf"), ("lvq", {}, "roots.0.0", 240, "root index"),
    ("svdq", {}, "scale", np.nan, "NaN"), ("svdq", {}, "zero", -np.inf, "NaN or Inf")])
def test_bad_content_is_rejected(method, opts, name, value, message):
    q = bqq.compress(gaussian((40, 40)), bits=2, method=method, **opts)
    bad = q.fields()[name].copy()
    bad.flat[0] = value
    with pytest.raises(ValueError, match=message):
        _rebuild(q, **{name: bad})


@pytest.mark.parametrize(("method", "key"), [("vq", "centroids"), ("svdq", "ranks")])
def test_counts_must_match_budget(method, key):
    q = bqq.compress(gaussian((64, 64)), bits=2, method=method)
    info = q.info()
    with pytest.raises(ValueError, match="disagree"):
        q.field_specs({**info, key: [[1]]}, q.grid)


