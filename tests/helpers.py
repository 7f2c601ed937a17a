"""Helpers shared by several test modules (test modules never import each other): paths, the tiny
non-timm transformer of the model-PTQ tests, random grouped BQQ matrices, the relative error."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent  # the repository root
FIXTURES = TESTS / "fixtures"

FAST = {"sweeps": 60}  # BQQ solver settings that keep model-PTQ tests quick


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d, bias=False)

    def forward(self, x):
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
        x = x + self.proj(att @ v)
        return x + self.fc2(torch.relu(self.fc1(self.norm2(x))))


class TinyTransformer(nn.Module):
    """A transformer-like model that is not from timm: conv patches, blocks, a head."""

    def __init__(self, d: int = 24, classes: int = 5) -> None:
        super().__init__()
        self.embed_dim = d
        self.patch = nn.Conv2d(3, d, 4, 4)
        self.pos = nn.Parameter(torch.randn(1, 4, d) * 0.02)
        self.blocks = nn.Sequential(Block(d), Block(d))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(1))


def tiny(seed: int = 0) -> TinyTransformer:
    torch.manual_seed(seed)
    return TinyTransformer().eval()


def random_weight(m: int, n: int, group: tuple[int, int], stacks: int, seed: int = 0):
    """A grouped BQQ matrix with random bits and scalars (no solver: fast)."""
    from benchmarks.kernels import random_bqq_matrix

    return random_bqq_matrix((m, n), group, stacks, seed)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())
