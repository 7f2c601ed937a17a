"""GPTQ ("gptq"): the inverse factor of H, round to nearest without data, lower output error with it."""

import numpy as np
import pytest
import torch

import bqq
from bqq.methods.gptq import encode_rows
from bqq.methods.uniform import encode
from tests.helpers import anisotropic_inputs, output_error


def test_gptq_reuses_the_factor_of_the_same_hessian_only_while_it_lives():
    from bqq.methods import gptq
    x = np.random.default_rng(0).standard_normal((50, 8))
    h = x.T @ x / 50
    first = gptq.inverse_factor(h, 0.01)
    np.testing.assert_allclose(first.T @ first, np.linalg.inv(h + 0.01 * np.eye(8)), rtol=1e-10)
    assert gptq.inverse_factor(h, 0.01) is first  # the same H object: no new factorization
    assert gptq.inverse_factor(h, 0.1) is not first  # other damping
    copy_h = h.copy()
    assert gptq.inverse_factor(copy_h, 0.1) is not gptq.inverse_factor(h, 0.1)  # another object
    del h, copy_h
    assert gptq._last_factor[0] is None  # the H died: its factor is released


def test_encode_rows_equals_uq_encode():
    rng = np.random.default_rng(0)
    x, lo, step = rng.standard_normal(50), rng.standard_normal(50), rng.uniform(0, 0.5, 50)
    step[:5] = 0
    expected = [encode(np.array([xi]), li, si, 3)[0] for xi, li, si in zip(x, lo, step, strict=True)]
    assert encode_rows(x, lo, step, 3).tolist() == expected


@pytest.mark.parametrize("group_size", [None, 8, (1, 12), (5, 7)])
def test_gptq_with_identity_h_is_round_to_nearest(group_size):
    w = np.random.default_rng(1).standard_normal((10, 24))
    uq = bqq.compress(w, 2, method="uq", group_size=group_size)
    gptq = bqq.compress(w, 2, method="gptq", group_size=group_size, hessian=np.eye(24), block_size=5, coarse_step=1)
    no_data = bqq.compress(w, 2, method="gptq", group_size=group_size, coarse_step=1)  # UQ's full grid search
    for q in (gptq, no_data):
        assert all(np.array_equal(a, b) for a, b in zip(q.codes, uq.codes, strict=True))
        assert np.array_equal(q.scale, uq.scale) and np.array_equal(q.zero, uq.zero)


def test_gptq_lowers_the_output_error_and_its_blocking_changes_nothing(tmp_path):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((16, 40))
    x = anisotropic_inputs(40, 300, 4)
    h = x.T @ x
    uq = bqq.compress(w, 2, method="uq", group_size=(4, 40))
    gptq = bqq.compress(w, 2, method="gptq", group_size=(4, 40), hessian=h)
    err_gptq = output_error(w, gptq.dequantize().double().numpy(), h)
    err_uq = output_error(w, uq.dequantize().double().numpy(), h)
    assert err_gptq < 0.9 * err_uq
    blocked = bqq.compress(w, 2, method="gptq", group_size=(4, 40), hessian=h, block_size=7)
    np.testing.assert_allclose(blocked.dequantize(), gptq.dequantize())
    bqq.save(gptq, tmp_path / "g.safetensors")
    loaded = bqq.load(tmp_path / "g.safetensors")
    assert loaded.method == "gptq" and torch.equal(loaded.dequantize(), gptq.dequantize())
