"""bqq.slt.train: the supermask search, the sparsity ramp, resuming."""

from __future__ import annotations

import pytest
import torch

import bqq.slt as slt
from tests.slt.common import blobs, mlp


def test_sparsity_ramp():
    m = slt.convert(mlp(), sparsity=0.8)
    slt.set_sparsity_ramp(m, 0.0)
    assert m[0].density() == 1.0
    slt.set_sparsity_ramp(m, 0.5)
    assert m[0].density() == slt.kept_count(m[0].numel, 0.4) / m[0].numel
    with pytest.raises(ValueError, match="ramp"):
        slt.set_sparsity_ramp(m, 1.5)


def test_supermask_search_learns_and_weights_stay_fixed(tmp_path):
    x, y = blobs(300)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    m = slt.convert(mlp(64), sparsity=0.5, seed=0)
    signs = [layer.signs.clone() for _, layer in slt.masked_layers(m)]
    before = slt.evaluate(m, loader)
    history = slt.fit(m, loader, epochs=8, lr=0.1, progress=False)
    after = slt.evaluate(m, loader)
    assert after > 85.0 and after > before + 20.0, (before, after, history[-1])
    assert all(torch.equal(s, layer.signs) for s, (_, layer) in zip(signs, slt.masked_layers(m), strict=True))


def test_fit_resumes_bit_identically(tmp_path):
    x, y = blobs(200)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    full = slt.convert(mlp(), method="msup", seed=0)
    ref = slt.fit(full, loader, epochs=3, progress=False)

    class Stop(Exception):
        pass

    def stop_after_2(epoch, _):
        if epoch == 2:
            raise Stop

    ckpt = tmp_path / "run.pt"
    part = slt.convert(mlp(), method="msup", seed=0)
    with pytest.raises(Stop):
        slt.fit(part, loader, epochs=3, checkpoint=ckpt, progress=False, on_epoch=stop_after_2)
    resumed = slt.convert(mlp(), method="msup", seed=0)
    hist = slt.fit(resumed, loader, epochs=3, checkpoint=ckpt, progress=False)
    assert hist == ref
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values(),
                                                  strict=True))


def test_nan_scores_raise():
    m = slt.convert(mlp())
    with torch.no_grad():
        m[0].scores[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN"):
        m(torch.randn(2, 10))
