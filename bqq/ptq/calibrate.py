"""Calibrated PTQ (the paper's c-BQQ, also for UQ/BCQ): tune only biases and norm parameters.

After data-free quantization the binaries and scalars stay fixed; the biases and the normalization
layers' weights and biases are trained so that the quantized model's logits match the floating-point
model's (MSE loss, Adam). Paper settings: lr 1e-3, 15 epochs, mini-batch 16, 2048 (DeiT) or 1024
(Swin) calibration images.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..common import progress_bar
from .modules import cached_weights, trainable_scalars

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class Calibration:
    """Settings of calibrated PTQ.

    Attributes:
        data: a DataLoader, or any re-iterable of batches; a batch is an input tensor or a tuple/list
            whose first item is the input (labels are ignored).
        epochs, lr: Adam on biases and norm parameters for ``epochs`` passes over ``data``.
        refit_scales: also train the FP32 scalars of groups with binary codes (BQQ, BCQ), the binaries
            fixed, as relative changes at ``lr`` (see :func:`bqq.ptq.modules.trainable_scalars`).
    """

    data: Iterable[Any]
    epochs: int = 15
    lr: float = 1e-3
    refit_scales: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if isinstance(self.data, torch.Tensor) or not isinstance(self.data, Iterable):
            raise ValueError("calibration data must be a DataLoader or an iterable of batches")


def tunable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every bias, and every parameter of a normalization layer."""
    chosen: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name == "bias" or isinstance(module, NORM_TYPES):
                chosen[id(p)] = p
    return list(chosen.values())


def calibrate(model: nn.Module, teacher: nn.Module, calibration: Calibration, *,
              progress: bool | None = None) -> list[float]:
    """Tune ``model``'s biases and norms to match ``teacher``'s outputs; returns the mean loss per epoch."""
    params = tunable_parameters(model)
    if not params:
        raise ValueError("the model has no biases or normalization parameters to calibrate")
    flags = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    was_training = model.training, teacher.training
    model.eval()
    teacher.eval()
    device = next(model.parameters()).device
    history = []
    try:
        with cached_weights(model), _maybe_scalars(model, calibration.refit_scales) as scalars:
            optimizer = torch.optim.Adam(params + scalars, lr=calibration.lr)
            for _ in progress_bar(range(calibration.epochs), progress=progress, desc="calibrate", unit="epoch"):
                total, batches = 0.0, 0
                for batch in calibration.data:
                    x = _inputs(batch).to(device)
                    with torch.no_grad():
                        target = teacher(x)
                    loss = F.mse_loss(model(x), target)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total, batches = total + loss.item(), batches + 1
                if batches == 0:
                    raise ValueError("calibration data yielded no batches")
                history.append(total / batches)
    finally:
        for p in model.parameters():
            p.requires_grad_(flags.get(id(p), True))
        model.train(was_training[0])
        teacher.train(was_training[1])
    return history


@contextlib.contextmanager
def _maybe_scalars(model: nn.Module, enabled: bool):
    if not enabled:
        yield []
        return
    with trainable_scalars(model) as scalars:
        yield scalars


def _inputs(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(f"a calibration batch must be a tensor or a (inputs, ...) tuple, got {type(batch).__name__}")
