"""QuantizedMatrix (bqq.quantized): assembling groups, versioned configs, and the content checks behind the
checksum (pad bits, NaN/Inf, counts against the budget) that every file load runs."""

from __future__ import annotations

import numpy as np
import pytest

import bqq
from bqq.grouping import GroupGrid
from bqq.methods import bits_meanings, get_method
from tests.helpers import gaussian, rebuild


def weight(m=30, n=44, seed=0):
    return np.random.default_rng(seed).standard_normal((m, n)).astype(np.float32)


def test_from_groups_rejects_mismatched_groups():
    w = weight()
    a = bqq.compress(w[:15, :22], 2, method="uq")
    b = bqq.compress(w[:15, 22:], 3, method="uq")
    grid = GroupGrid.build((15, 44), (15, 22))
    with pytest.raises(ValueError, match="share bits"):
        get_method("uq").from_groups(grid, [a, b])
    with pytest.raises(ValueError, match="2 groups for a grid of 4"):
        get_method("uq").from_groups(GroupGrid.build((30, 44), (15, 22)), [a, a])
    with pytest.raises(ValueError, match="single-group"):
        get_method("bcq").from_groups(grid, [a, a])


def test_every_config_has_a_version_and_newer_ones_are_refused(tmp_path):
    for name in bqq.available_methods():
        assert get_method(name).config_class.VERSION >= 1
        assert bits_meanings()[name]
    q = bqq.compress(weight(), 2, method="bcq")
    info = q.info()
    assert info["config_version"] == 1
    info["config_version"] = 99
    with pytest.raises(ValueError, match="version 99 is newer than this bqq reads"):
        type(q).from_fields(info, q.grid, q.fields())
    info["config_version"] = 1
    info["config"] = {"rounds": 3, "speed": 2}
    with pytest.raises(ValueError, match="unknown BCQConfig field"):
        type(q).from_fields(info, q.grid, q.fields())


# --- content validation behind the checksum (QuantizedMatrix.from_fields, field_specs) ---------------


@pytest.mark.parametrize(("method", "opts", "name"), [("vq", {"centroid_bits": 4}, "ccodes.0.0"),
                                                      ("svdq", {"factor_bits": 4}, "r.0.0"),
                                                      ("lvq", {}, "scodes.0.0")])
def test_nonzero_pad_bits_of_packed_codes_are_rejected(method, opts, name):
    q = bqq.compress(gaussian((40, 44)), bits=2, method=method, **opts)
    packed = q.fields()[name].copy()
    packed[..., -1] |= 0x80
    with pytest.raises(ValueError, match="pad bits"):
        rebuild(q, **{name: packed})


@pytest.mark.parametrize(("method", "opts", "name", "value", "message"), [
    ("vq", {}, "centroids.0.0", np.nan, "NaN"), ("vq", {"centroid_bits": 4}, "scale", -1.0, ">= 0"),
    ("lvq", {}, "zero", np.inf, "NaN or Inf"), ("lvq", {}, "roots.0.0", 240, "root index"),
    ("svdq", {}, "scale", np.nan, "NaN"), ("svdq", {}, "zero", -np.inf, "NaN or Inf")])
def test_bad_content_is_rejected(method, opts, name, value, message):
    q = bqq.compress(gaussian((40, 40)), bits=2, method=method, **opts)
    bad = q.fields()[name].copy()
    bad.flat[0] = value
    with pytest.raises(ValueError, match=message):
        rebuild(q, **{name: bad})


@pytest.mark.parametrize(("method", "key"), [("vq", "centroids"), ("svdq", "ranks")])
def test_counts_must_match_budget(method, key):
    q = bqq.compress(gaussian((64, 64)), bits=2, method=method)
    info = q.info()
    with pytest.raises(ValueError, match="disagree"):
        q.field_specs({**info, key: [[1]]}, q.grid)


PACKED_FIELD = {"uq": "codes.1.0", "bcq": "signs.1.0", "svd": "u.1.0"}  # a field of an uneven group


@pytest.mark.parametrize("method", ["uq", "bcq"])
def test_nonzero_pad_bits_are_rejected(method):
    q = bqq.compress(gaussian((130, 100)), bits=2, method=method, group_size=(64, 48))
    name = PACKED_FIELD[method]
    packed = q.fields()[name].copy()  # the group is 34 columns wide: 6 pad bits per row
    rebuild(q, **{name: packed})     # untouched fields are accepted
    packed[0, 0, -1] |= 0x80
    with pytest.raises(ValueError, match="pad bits"):
        rebuild(q, **{name: packed})


@pytest.mark.parametrize(("method", "name", "value", "message"),
                         [("uq", "scale", np.nan, "NaN"), ("uq", "zero", np.inf, "NaN or Inf"),
                          ("uq", "scale", -0.5, ">= 0"), ("bcq", "alpha", np.nan, "NaN"),
                          ("svd", "v.0.0", np.nan, "NaN"), ("svd", "u.0.0", -np.inf, "NaN or Inf")])
def test_bad_scalars_are_rejected(method, name, value, message):
    q = bqq.compress(gaussian((40, 40)), bits=2, method=method)
    bad = q.fields()[name].copy()
    bad.flat[0] = value
    with pytest.raises(ValueError, match=message):
        rebuild(q, **{name: bad})
