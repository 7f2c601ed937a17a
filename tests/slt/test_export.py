"""bqq.slt.export: tickets exported and loaded exactly; tampered, truncated and foreign tickets refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bqq
import bqq.slt as slt
from tests.slt.common import cnn, mlp

VARIANTS = [
    dict(method="edge_popup", sparsity=0.5),
    dict(method="edge_popup", sparsity=0.7, scope="global"),
    dict(method="msup", sparsity=0.5, coats=3),
    dict(method="msup", sparsity=[0.7, 0.9212, 0.9685], scope="global"),
    dict(method="edge_popup", sparsity=0.5, freeze=slt.FreezeConfig(prune=0.35, lock=0.35)),
    dict(method="edge_popup", sparsity=0.5, scale="dynamic", freeze=slt.FreezeConfig(prune=0.2, lock=0.1, rule="erk"),
         scope="global"),
]


@pytest.mark.parametrize("settings", VARIANTS, ids=lambda s: "-".join(str(v) for v in s.values())[:40])
def test_export_load_round_trip_is_exact(settings, tmp_path):
    m = slt.convert(cnn(), seed=11, **settings)
    x = torch.randn(4, 2, 8, 8)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):  # move the scores and the BN statistics away from their initial values
        opt.zero_grad()
        m(x).square().mean().backward()
        opt.step()
    m.eval()
    path = tmp_path / "ticket.safetensors"
    slt.export(m, path)
    fresh = slt.load(path, cnn()).eval()
    assert torch.equal(m(x), fresh(x))
    assert all(layer.is_fixed for _, layer in slt.masked_layers(fresh))
    assert fresh.slt_config == m.slt_config
    report = slt.memory_report(m)
    assert slt.memory_report(fresh)["ticket_bits"] == report["ticket_bits"]
    mask_bytes = path.stat().st_size - 4 * report["other_bits"] // 32
    assert mask_bytes < 8000  # seed + packed bits + header: no weights stored
    path2 = tmp_path / "again.safetensors"
    slt.export(fresh, path2)  # a loaded ticket exports the same content
    assert bqq.format.read_file(path)[0].keys() == bqq.format.read_file(path2)[0].keys()


def test_load_rejects_tampering_truncation_and_wrong_models(tmp_path):
    m = slt.convert(cnn(), method="msup", seed=0)
    path = tmp_path / "t.safetensors"
    slt.export(m, path)
    data = bytearray(path.read_bytes())
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(bqq.FormatError, match="truncated"):
        slt.load(bad, cnn())
    data[-3] ^= 0x01
    bad.write_bytes(bytes(data))
    with pytest.raises(bqq.FormatError, match="checksum"):
        slt.load(bad, cnn())
    with pytest.raises(ValueError, match="weight shape"):
        slt.load(path, nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                     nn.Conv2d(6, 6, 3, stride=2, groups=2), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(6 * 3 * 3, 4)))
    with pytest.raises(ValueError, match="the model has Linear there"):
        slt.load(path, mlp())
    with pytest.raises(bqq.FormatError, match=r"bqq\.slt\.load"):
        bqq.load(path)
    q = tmp_path / "q.safetensors"
    bqq.save(bqq.compress(torch.randn(16, 16), bits=2, method="uq"), q)
    with pytest.raises(bqq.FormatError, match="not an SLT ticket"):
        slt.load(q, cnn())


def test_export_needs_masked_layers(tmp_path):
    with pytest.raises(ValueError, match="convert"):
        slt.export(mlp(), tmp_path / "x.safetensors")
    m = slt.convert(mlp())
    with pytest.raises(ValueError, match="already has masked layers"):
        slt.convert(m)


def test_a_ticket_with_a_newer_config_version_is_refused_before_the_model_changes(tmp_path, monkeypatch):
    from bqq.slt.convert import SLTConfig

    m = slt.convert(cnn(), method="msup", seed=0)
    path = tmp_path / "t.safetensors"
    monkeypatch.setattr(SLTConfig, "VERSION", 2)  # a ticket written by a future bqq
    slt.export(m, path)
    monkeypatch.setattr(SLTConfig, "VERSION", 1)
    target = cnn()
    before = [type(mod) for mod in target.modules()]
    with pytest.raises(bqq.FormatError, match="version 2 is newer than this bqq reads"):
        slt.load(path, target)
    assert [type(mod) for mod in target.modules()] == before
