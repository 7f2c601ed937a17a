"""Helpers shared by several test modules (test modules never import each other): paths, the tiny
non-timm transformer of the model-PTQ tests, random grouped BQQ matrices, the relative error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent  # the repository root
FIXTURES = TESTS / "fixtures"
TINY_LLAMA = ROOT / "benchmarks" / "models" / "tiny-llama"  # the committed tiny Llama of the LLM benchmark

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


def gaussian(shape: tuple[int, int], seed: int = 1) -> np.ndarray:
    """A standardized Gaussian matrix."""
    w = np.random.default_rng(seed).standard_normal(shape)
    return (w - w.mean()) / w.std()


def mse(q, w: np.ndarray) -> float:
    """Mean squared error of a QuantizedMatrix against the matrix it compressed."""
    return float(((q.dequantize().double().numpy() - w) ** 2).mean())


def assert_same(q1, q2) -> None:
    """Two QuantizedMatrix objects are bit-identical: every stored field (names, dtypes, shapes, bytes) and
    the rebuilt matrix."""
    f1, f2 = q1.fields(), q2.fields()
    assert f1.keys() == f2.keys()
    for name in f1:
        assert f1[name].dtype == f2[name].dtype, name
        assert f1[name].shape == f2[name].shape, name
        assert np.array_equal(f1[name], f2[name]), name
    assert torch.equal(q1.dequantize(), q2.dequantize())


def rebuild(q, info_changes: dict | None = None, **changes: np.ndarray):
    """``q`` rebuilt by ``from_fields`` as it would come back from a file, with some fields or info replaced
    (content validation behind the checksum)."""
    fields = {**{k: v.copy() for k, v in q.fields().items()}, **changes}
    info = {**json.loads(json.dumps(q.info())), **(info_changes or {})}
    return type(q).from_fields(info, q.grid, fields)


def anisotropic_inputs(n: int, rows: int, seed: int) -> np.ndarray:
    """(rows, n) correlated inputs with a few outlier channels, like real activations."""
    rng = np.random.default_rng(seed)
    mix = np.eye(n) + 0.3 * rng.standard_normal((n, n))
    scale = np.ones(n)
    scale[rng.choice(n, 4, replace=False)] = 6.0
    return rng.standard_normal((rows, n)) @ mix * scale


def output_error(w: np.ndarray, w_hat: np.ndarray, h: np.ndarray) -> float:
    e = w - w_hat
    return float(np.trace(e @ h @ e.T))


def model_outputs(model, x):
    """``model(x)`` without autograd."""
    with torch.no_grad():
        return model(x)


def transformers_module():
    """``transformers``, or a skip without it (the [hf] extra; CI installs it)."""
    pytest.importorskip("transformers")
    from bqq.compat import import_transformers

    return import_transformers()
