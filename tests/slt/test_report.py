"""bqq.slt.report: the memory report, counted like the papers count."""

from __future__ import annotations

import pytest
from torch import nn

import bqq.slt as slt
from tests.slt.common import cnn, mlp


def gin_arxiv_linears() -> nn.ModuleDict:
    """The linear layers of paper B's GIN on ogbn-arxiv: 128 -> 386 -> 386 -> 386 -> 40 plus a 386 -> 40 head."""
    dims = {"l0": (128, 386), "l1": (386, 386), "l2": (386, 386), "l3": (386, 40), "head": (386, 40)}
    return nn.ModuleDict({name: nn.Linear(i, o, bias=False) for name, (i, o) in dims.items()})


def test_memory_report_counts_like_the_papers():
    report = slt.memory_report(slt.convert(gin_arxiv_linears(), sparsity=0.7), seed_bits=32)
    assert report["masked_weights"] == 378_280 and report["dense_bits"] == 12_104_960
    assert report["ticket_bits"] == 378_280 + 32 and report["reduction"] == pytest.approx(0.969, abs=5e-4)
    frozen = slt.convert(gin_arxiv_linears(), sparsity=0.7, freeze=slt.FreezeConfig(prune=0.5, lock=0.2))
    assert slt.memory_report(frozen)["mask_bits"] == pytest.approx(0.3 * 378_280, abs=5)  # 99.06 % reduction
    msup = slt.memory_report(slt.convert(mlp(), method="msup", sparsity=[0.7, 0.9212, 0.9685]))
    assert msup["masked_weights"] == 10 * 24 + 24 * 24 + 24 * 3
    expected = sum(layer["weights"] * (1 + 0.3 + 0.0788) for layer in msup["layers"])  # hierarchical coats
    assert msup["mask_bits"] == pytest.approx(expected, abs=6)


def test_memory_report_counts_other_parameters():
    r = slt.memory_report(slt.convert(cnn(), seed=0))
    other = 12 + 6 + 4  # affine BN weight and bias, the grouped conv's bias, the linear's bias
    assert r["other_bits"] == 32 * other
    assert r["dense_bits"] == 32 * (r["masked_weights"] + other)
    assert r["ticket_bits"] == 64 + r["mask_bits"] + 32 * other
    with_stats = slt.memory_report(slt.convert(cnn(), seed=0), count_norm_stats=True)
    assert with_stats["other_bits"] == r["other_bits"] + 32 * 12  # running mean and var
