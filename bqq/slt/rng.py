"""Counter-based random numbers for regenerating frozen weights and freezing patterns from a seed.

Every random draw is ``splitmix64(layer_seed + i)`` for element ``i``, where ``layer_seed`` is a hash of
(global seed, purpose, layer name). So a layer's weights never depend on module order, on how many
draws happened before, on the device or on the torch version: a stored ticket is just the seed plus
mask bits. The algorithm is recorded in files as :data:`RNG_ID`.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

RNG_ID = "splitmix64-blake2b-v1"
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def layer_seed(seed: int, purpose: str, name: str) -> int:
    """A 64-bit stream key for one (global seed, purpose, layer name), e.g. (0, "weight", "fc1")."""
    if not isinstance(seed, int | np.integer) or not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    digest = hashlib.blake2b(f"{int(seed)}\0{purpose}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def splitmix64(key: int, count: int) -> np.ndarray:
    """``count`` uint64 values: the SplitMix64 finalizer of ``key + (i + 1)·golden`` for i = 0..count-1."""
    with np.errstate(over="ignore"):
        state = np.uint64(key) + (np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN)
        z = (state ^ (state >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def random_signs(key: int, shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 tensor of ±1 of ``shape`` (sign of element i = bit 63 of draw i)."""
    count = int(np.prod(shape, dtype=np.int64))
    bits = (splitmix64(key, count) >> np.uint64(63)).astype(np.float32)
    return torch.from_numpy(2.0 * bits - 1.0).reshape(shape)


def random_normal(key: int, shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 tensor of standard normal values of ``shape`` (Box-Muller on two 53-bit uniforms)."""
    count = int(np.prod(shape, dtype=np.int64))
    draws = splitmix64(key, 2 * count)
    u = ((draws >> np.uint64(11)).astype(np.float64) + 0.5) / float(2**53)  # in (0, 1), never 0
    z = np.sqrt(-2.0 * np.log(u[:count])) * np.cos(2.0 * np.pi * u[count:])
    return torch.from_numpy(z.astype(np.float32)).reshape(shape)


def permutation(key: int, count: int) -> np.ndarray:
    """A random permutation of ``range(count)`` (int64): indices ordered by their draw, ties by index."""
    return np.argsort(splitmix64(key, count), kind="stable")
