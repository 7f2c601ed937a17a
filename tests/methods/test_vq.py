"""k-means VQ ("vq"): the centroid count a budget buys, Lloyd iterations with restarts, stored centroids and
row indices (LVQ: test_lattice.py; SVDQ: test_svdq.py; what every method keeps: test_contract.py)."""

from __future__ import annotations

import numpy as np
import pytest

import bqq
from bqq.methods.vq import centroids_for_budget, index_bits, kmeans, vq_bits
from tests.helpers import gaussian, rebuild


def test_vq_bad_settings_are_rejected():
    w = gaussian((16, 16))
    with pytest.raises(ValueError, match="centroid_bits"):
        bqq.compress(w, bits=2, method="vq", centroid_bits=16)
    with pytest.raises(ValueError, match="restarts"):
        bqq.compress(w, bits=2, method="vq", restarts=0)

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


def test_vq_index_beyond_centroids_is_rejected():
    q = bqq.compress(gaussian((40, 24)), bits=3, method="vq")  # K = 3: 2 index bits, code 3 is invalid
    assert q.counts == [3]
    packed = q.fields()["index.0.0"].copy()
    rebuild(q, **{"index.0.0": packed})
    packed[:, 0] |= 0x01  # row 0 gets index 3
    with pytest.raises(ValueError, match="row index"):
        rebuild(q, **{"index.0.0": packed})
