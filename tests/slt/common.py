"""Small models and data shared by the bqq.slt tests."""

from __future__ import annotations

import torch
from torch import nn


def mlp(width: int = 24, bias: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Linear(10, width, bias=bias), nn.ReLU(), nn.Linear(width, width, bias=bias), nn.ReLU(),
                         nn.Linear(width, 3, bias=bias))


def cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, stride=2, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 3 * 3, 4))


def blobs(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian classes in 10-d, linearly separable enough for a supermask to learn."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.randn(3, 10, generator=g) * 2.0
    return centers[y] + torch.randn(n, 10, generator=g), y
