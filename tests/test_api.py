"""bqq.compress (bqq.api) input validation: bad input (matrices, bits, options, hessians) raises a clear error naming
the problem."""

import math

import numpy as np
import pytest
import torch

import bqq

W = np.random.default_rng(0).standard_normal((16, 12))


def test_registry_lists_the_builtin_methods():
    assert {"bqq", "uq", "bcq", "svd"} <= set(bqq.available_methods())
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        bqq.compress(W, method="nope")


@pytest.mark.parametrize("bad, match", [
    (np.array([[1.0, np.nan], [0.0, 1.0]]), "1 NaN"),
    (np.array([[1.0, np.inf], [0.0, -np.inf]]), "2 Inf"),
    (np.zeros(5), "2-D"),
    (np.zeros((2, 3, 4)), "2-D"),
    (np.zeros((0, 5)), "empty"),
    (np.zeros((4, 4), np.int32), "floating dtype"),
    (np.zeros((4, 4), bool), "floating dtype"),
    (np.zeros((4, 4), np.complex64), "floating dtype"),
    (torch.zeros(4, 4, dtype=torch.int64), "floating dtype"),
    (torch.tensor([[1.0, float("nan")]]), "NaN"),
])
def test_bad_matrices(bad, match):
    with pytest.raises(ValueError, match=match):
        bqq.compress(bad, bits=1)


def test_non_array_input_is_a_type_error():
    with pytest.raises(TypeError, match=r"torch\.Tensor or numpy\.ndarray"):
        bqq.compress([[1.0, 2.0]], bits=1)


@pytest.mark.parametrize("method, bits", [
    ("bqq", 0), ("bqq", -1), ("bqq", 17), ("bqq", 10**9), ("bqq", 2.5), ("bqq", True), ("bqq", math.nan),
    ("bqq", "2"), ("uq", 0), ("uq", 9), ("bcq", 9), ("bcq", 1.5), ("svd", 0), ("svd", -2.0), ("svd", 33),
    ("svd", math.inf),
])
def test_bits_out_of_range(method, bits):
    with pytest.raises(ValueError, match="bits"):
        bqq.compress(W, bits=bits, method=method)


@pytest.mark.parametrize("rank_scale", [0, -1.0, math.nan, math.inf, 17.0, "1"])
def test_bad_rank_scale(rank_scale):
    with pytest.raises(ValueError, match="rank_scale"):
        bqq.compress(W, bits=1, rank_scale=rank_scale)


def test_rank_scale_is_a_bqq_option_only():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['rank_scale'\] for method 'uq'"):
        bqq.compress(W, bits=2, method="uq", rank_scale=0.5)
    assert bqq.compress(W, bits=1, rank_scale=0.5, sweeps=50).config.rank_scale == 0.5


@pytest.mark.parametrize("group_size", [0, -3, (4, 0), (4,), (4, 4, 4), "8", (4.0, 4), True])
def test_bad_group_size(group_size):
    with pytest.raises(ValueError, match="group_size"):
        bqq.compress(W, bits=1, group_size=group_size)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0", 2**64])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        bqq.compress(W, bits=1, seed=seed)


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(TypeError, match="sweeps"):
        bqq.compress(W, bits=1, sweps=10)


@pytest.mark.parametrize("opts", [{"sweeps": 0}, {"sweeps": 2.5}, {"t_start": 0.1, "t_end": 0.2},
                                  {"alpha_scale": -1.0}, {"restarts": 0}, {"polish_rounds": -1},
                                  {"batch_groups": 0}])
def test_invalid_solver_settings(opts):
    with pytest.raises(ValueError, match="invalid BQQ settings"):
        bqq.compress(W, bits=1, **opts)


def test_group_size_larger_than_the_matrix_is_clipped():
    q = bqq.compress(W, bits=1, group_size=1000, sweeps=50)
    assert q.group_shape == (16, 12) and len(q.grid) == 1


def test_input_is_not_modified():
    w = torch.randn(12, 10)
    before = w.clone()
    bqq.compress(w, bits=2, sweeps=50)
    assert torch.equal(w, before)


# --- hessians ----------------------------------------------------------------------------------------

def test_bad_hessians_are_refused():
    w = np.random.default_rng(0).standard_normal((6, 8))
    with pytest.raises(ValueError, match=r"hessian must be \(8, 8\)"):
        bqq.compress(w, 1, hessian=np.eye(7))
    with pytest.raises(ValueError, match=r"hessian.*NaN"):
        bqq.compress(w, 1, hessian=np.full((8, 8), np.nan))
    with pytest.raises(ValueError, match="no positive diagonal"):
        bqq.compress(w, 1, hessian=np.zeros((8, 8)))
    with pytest.raises(TypeError, match="does not use a hessian"):
        bqq.compress(w, 2, method="bcq", hessian=np.eye(8))
    with pytest.raises(ValueError, match="damping"):
        bqq.compress(w, 1, hessian=np.eye(8), damping=-1)
    with pytest.raises(ValueError, match="damping"):
        bqq.compress(w, 2, method="gptq", hessian=np.eye(8), damping=0)
