"""A small training helper for supermask search (and, for comparison, dense training).

Only parameters with ``requires_grad`` are optimized: for a converted model that is the scores plus
biases and affine norms; the random weights are buffers and never change. SGD with momentum and a
cosine schedule by default (the Edge-Popup / frozen-network recipe), or Adam. With ``checkpoint``,
state is saved atomically after every epoch and an interrupted run resumes from the last one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .layers import masked_layers


def set_sparsity_ramp(model: nn.Module, ramp: float) -> None:
    """Scale every masked layer's target sparsities by ``ramp`` in [0, 1] (a sparsity warm-up)."""
    if not 0.0 <= ramp <= 1.0:
        raise ValueError(f"ramp must be in [0, 1], got {ramp!r}")
    for _, layer in masked_layers(model):
        layer.group.ramp = float(ramp)


def fit(model: nn.Module, loader: Iterable, *, epochs: int, lr: float = 0.1, optimizer: str = "sgd",
        momentum: float = 0.9, weight_decay: float = 1e-4, loss_fn: Callable | None = None,
        checkpoint: str | os.PathLike | None = None, seed: int | None = 0, progress: bool = True,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Train ``model`` for ``epochs`` over ``loader`` ((inputs, targets) batches); returns per-epoch
    {"epoch", "loss", "accuracy"} on the training batches.

    With ``seed``, torch's global RNG is reseeded with ``seed + epoch`` before every epoch, so a
    shuffling DataLoader without its own generator (and dropout) replays the same order: a run resumed
    from ``checkpoint`` ends bit-identical to an uninterrupted one.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    history: list[dict[str, float]] = []
    start = 0
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, start = state["history"], state["epoch"]
    for epoch in range(start, epochs):
        if seed is not None:
            torch.manual_seed(seed + epoch)
        stats = _epoch(model, loader, opt, loss_fn, desc=f"epoch {epoch + 1}/{epochs}", progress=progress)
        sched.step()
        history.append({"epoch": epoch + 1, **stats})
        if checkpoint is not None:
            _save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "history": history, "epoch": epoch + 1}, checkpoint)
        if on_epoch is not None:
            on_epoch(epoch + 1, stats)
    return history


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable) -> float:
    """Top-1 accuracy (%) of ``model`` over ``loader``."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(-1) == y).sum())
        total += len(y)
    model.train(was_training)
    return 100.0 * correct / max(total, 1)


def _epoch(model: nn.Module, loader: Iterable, opt: torch.optim.Optimizer, loss_fn: Callable, *, desc: str,
           progress: bool) -> dict[str, float]:
    model.train()
    loss_sum = correct = total = 0.0
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = loss_fn(out, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss is {loss.item()} (learning rate too high?)")
        loss.backward()
        opt.step()
        loss_sum += loss.item() * len(y)
        correct += int((out.argmax(-1) == y).sum())
        total += len(y)
    return {"loss": loss_sum / total, "accuracy": 100.0 * correct / total}


def _save_atomic(state: dict[str, Any], path: str | os.PathLike) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
