"""Full-batch node-classification training for dense GNNs and their strong-lottery-ticket versions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..slt import masked_layers, set_sparsity_ramp
from .graph import Graph


def train_node_classifier(model: nn.Module, graph: Graph, *, epochs: int = 200, lr: float = 0.01,
                          weight_decay: float = 0.0, ramp: float = 0.5, seed: int = 0,
                          restore_best: bool = True, progress: bool = True) -> dict[str, float]:
    """Train with AdamW on the training nodes; return the test accuracy at the best validation epoch.

    For SLT models (after ``bqq.slt.convert``) only the scores (and any biases/affine norms) train and
    the target sparsity ramps linearly from 0 over the first ``ramp`` fraction of the epochs (UGT's
    sparse decay; 0 disables it). Validation only counts once the ramp is complete, so the reported
    model has the target sparsity. Returns {"test", "val", "train", "best_epoch", "epochs"} (accuracy in %,
    measured at ``best_epoch``). With ``restore_best`` the model ends in its state of ``best_epoch`` (what
    it reports, and what ``bqq.slt.export`` then stores); otherwise in its final-epoch state.
    """
    if epochs < 1 or not 0.0 <= ramp < 1.0:
        raise ValueError(f"need epochs >= 1 and 0 <= ramp < 1, got {epochs}, {ramp}")
    torch.manual_seed(seed)  # dropout
    is_slt = bool(masked_layers(model))
    ramp_epochs = int(ramp * epochs) if is_slt else 0
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    best = {"val": -1.0, "test": 0.0, "train": 0.0, "best_epoch": 0}
    best_state: dict[str, torch.Tensor] | None = None
    for epoch in tqdm(range(epochs), desc=f"train {graph.name}", disable=not progress, leave=False):
        if ramp_epochs:
            set_sparsity_ramp(model, min(1.0, (epoch + 1) / ramp_epochs))
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(graph.x, graph)[graph.train], graph.y[graph.train])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"epoch {epoch + 1}: loss is {loss.item()} (learning rate too high?)")
        loss.backward()
        opt.step()
        if epoch + 1 < ramp_epochs:
            continue
        acc = accuracy(model, graph)
        if acc["val"] > best["val"]:
            best = {**acc, "best_epoch": epoch + 1}
            if restore_best:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if is_slt:
        set_sparsity_ramp(model, 1.0)
    if best_state is not None:
        model.load_state_dict(best_state)
    return {**best, "epochs": epochs}


@torch.no_grad()
def accuracy(model: nn.Module, graph: Graph) -> dict[str, float]:
    """Accuracy (%) on the train, val and test nodes, in eval mode."""
    was_training = model.training
    model.eval()
    pred = model(graph.x, graph).argmax(-1)
    model.train(was_training)
    return {split: 100.0 * float((pred[mask] == graph.y[mask]).float().mean())
            for split, mask in (("train", graph.train), ("val", graph.val), ("test", graph.test))}
