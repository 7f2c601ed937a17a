"""bqq.gnn.models (and .layers): GCN/GIN forwards with SLT gradients, folded weight sharing."""

from __future__ import annotations

import pytest
import torch

from bqq import gnn, slt


@pytest.mark.parametrize("conv", ["gcn", "gin"])
def test_gnn_forward_and_slt_gradients(conv):
    g = gnn.karate_club()
    model = slt.convert(gnn.GNN(34, 16, 2, layers=3, conv=conv), method="msup", scope="global", seed=1)
    out = model(g.x, g)
    assert out.shape == (34, 2)
    out.sum().backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith("scores") for n in trainable)
    assert all(p.grad is not None for n, p in model.named_parameters())


def test_folding_shares_weights_exactly():
    dense = gnn.FoldedGNN(34, 16, 2, stages=(3, 2), unshared_masks=True)
    stage = dense.stages[0]
    assert all(c.lin.weight is stage.convs[0].lin.weight for c in stage.convs)
    n_params = sum(p.numel() for p in dense.parameters())
    assert n_params == 34 * 16 + 16 * 16 * 2 + 16 * 2  # one weight per stage
    assert dense.depth == 7
    shared = slt.convert(gnn.FoldedGNN(34, 16, 2, stages=(3, 2)), method="msup", seed=0)
    unshared = slt.convert(dense, method="msup", seed=0)
    assert len(slt.masked_layers(shared)) == 4 and len(slt.masked_layers(unshared)) == 7
    convs = [c.lin for c in unshared.stages[0].convs]
    assert all(torch.equal(c.signs, convs[0].signs) for c in convs)
    assert not torch.equal(convs[0].scores, convs[1].scores)
    assert torch.equal(shared.stages[0].convs[0].lin.signs, convs[0].signs)  # same key: same random weight
    report = slt.memory_report(unshared)
    assert report["dense_bits"] == 32 * n_params  # the shared weight counts once in the dense model
    assert report["mask_bits"] > slt.memory_report(shared)["mask_bits"]  # but each iteration has a mask
