"""LVQ: E8 lattice vector quantization with greedy residual stages (paper §3.2, method 7).

Every group is flattened row-major and cut into 8-dim chunks (the last one zero-padded). Each of the
``bits`` = p stages picks, for every chunk, the E8 root (one of the 240 vectors of norm √2) with the
highest cosine similarity to the chunk's residual, fits the least-squares scale α = ⟨x, c⟩ / 2,
quantizes all α of the stage with ``scale_bits``-bit uniform codes (one grid-searched clip range per
group and stage, as in the ``uq`` method), and subtracts α̂·c from the residual.

Root table order (stored indices refer to it, see docs/format.md): indices 0-127 are the vectors
(±½)^8 with an even number of minus signs, in increasing order of the integer t whose bit i set
means entry i is −½; indices 128-239 are ±e_i ± e_j (i < j), pairs (i, j) in lexicographic order and
signs (s_i, s_j) in the order (−,−), (−,+), (+,−), (+,+).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import ClassVar

import numpy as np

from ..common import check_settings, is_int, progress_bar
from ..format import packed_length
from ..quantized import GroupField, QuantizedMatrix
from .codes import dequantize_codes, pack_codes, uniform_codes, unpack_codes
from .registry import register_method

CHUNK = 8
ROOTS = 240
_ROWS_PER_BLOCK = 1 << 14  # chunks per similarity block: (16384, 240) float64 temporaries, about 31 MB


@cache
def e8_roots() -> np.ndarray:
    """The 240 E8 roots, float64 (240, 8), in the documented order (all of squared norm 2)."""
    half = [[-0.5 if (t >> i) & 1 else 0.5 for i in range(CHUNK)] for t in range(256) if bin(t).count("1") % 2 == 0]
    ints = []
    for i in range(CHUNK):
        for j in range(i + 1, CHUNK):
            for si in (-1.0, 1.0):
                for sj in (-1.0, 1.0):
                    v = [0.0] * CHUNK
                    v[i], v[j] = si, sj
                    ints.append(v)
    roots = np.array(half + ints)
    roots.setflags(write=False)
    return roots


def chunk_count(shape: tuple[int, int]) -> int:
    """Number of 8-dim chunks of an (m, n) group: ceil(m n / 8)."""
    return -(-shape[0] * shape[1] // CHUNK)


def nearest_roots(x: np.ndarray) -> np.ndarray:
    """Index (N,) of the root with the highest cosine similarity to every chunk of x (N, 8).

    All roots have the same norm, so this is the largest inner product; ties (and zero chunks) go to
    the lowest index.
    """
    roots = e8_roots()
    out = np.empty(x.shape[0], np.int64)
    for start in range(0, x.shape[0], _ROWS_PER_BLOCK):
        out[start:start + _ROWS_PER_BLOCK] = (x[start:start + _ROWS_PER_BLOCK] @ roots.T).argmax(axis=1)
    return out


@dataclass(frozen=True)
class LVQConfig:
    """Settings of LVQ (pass them as ``bqq.compress(..., method="lvq", name=value)``).

    Attributes:
        scale_bits: code width of the per-chunk scales α (the paper's benchmark call uses 1; its text says 2).
        grid_points: clip-range grid of the scale quantizer (as ``uq``'s ``grid_points``).
    """

    VERSION: ClassVar[int] = 1

    scale_bits: int = 1
    grid_points: int = 100

    def __post_init__(self) -> None:
        check_settings(self, {"scale_bits": is_int(self.scale_bits) and 1 <= self.scale_bits <= 8,
                              "grid_points": is_int(self.grid_points) and 2 <= self.grid_points <= 10_000})

@register_method("lvq")
class LVQMatrix(QuantizedMatrix):
    """An E8-LVQ matrix: per group and stage one root index and one quantized scale per 8-dim chunk.

    Fields, for group (a, b) of shape (m_g, n_g) with N_g = ceil(m_g n_g / 8) chunks, p = bits stages
    and s = scale_bits: ``roots.{a}.{b}`` uint8 (p, N_g), each an index < 240 into the root table of
    the module docstring; ``scodes.{a}.{b}`` uint8 (p, s, ceil(N_g/8)), plane j holding bit j of every
    chunk's scale code; ``scale`` and ``zero`` float32 (R, C, p), the step and lowest level of each
    stage's scale quantizer. Chunk k of a stage is rebuilt as (zero + code_k · scale) · root_k.

    Bits per group: p · (N_g · (8 + s) + 64). The reference benchmark code counts
    p · (N · (8 + s) + 32), i.e. one FP32 scalar per stage for the scale quantizer; both of its
    scalars are counted here.
    """

    config_class = LVQConfig
    min_bits = 1
    max_bits = 16
    bits_meaning = "stages p: p greedy E8 stages, (8 + scale_bits)/8 bits per weight each"
    group_fields = (
        GroupField("roots", "uint8", lambda g: (g.bits, g.meta)),
        GroupField("scodes", "uint8", lambda g: (g.bits, g.config.scale_bits, packed_length(g.meta)),
                   packed_bits=lambda g: g.meta),
        GroupField("scale", "float32", lambda g: (g.bits,), per_group=False, nonnegative=True),
        GroupField("zero", "float32", lambda g: (g.bits,), per_group=False),
    )

    @classmethod
    def group_meta(cls, shape, bits, config) -> int:
        return chunk_count(shape)  # N_g, the 8-weight chunks of a group (derived, not stored)

    @classmethod
    def quantize(cls, w, grid, bits, seed, config, progress=None, first_group=0) -> LVQMatrix:
        p, sb = int(bits), config.scale_bits
        roots_table = e8_roots()
        roots, scodes = [], []
        scale, zero = np.empty((len(grid), p), np.float32), np.empty((len(grid), p), np.float32)
        groups = progress_bar(grid.split(w), progress=progress, desc=f"lvq {w.shape[0]}x{w.shape[1]}", unit="group")
        for g, x in enumerate(groups):
            count = chunk_count(x.shape)
            residual = np.zeros(count * CHUNK)
            residual[:x.size] = x.ravel()
            residual = residual.reshape(count, CHUNK)
            idx = np.empty((p, count), np.uint8)
            codes = np.empty((p, count), np.uint8)
            for stage in range(p):
                idx[stage] = nearest_roots(residual)
                chosen = roots_table[idx[stage]]
                alpha = (residual * chosen).sum(axis=1) / 2.0  # least squares: ⟨x, c⟩ / ‖c‖²
                codes[stage], zero[g, stage], scale[g, stage] = uniform_codes(alpha, sb, config.grid_points)
                residual -= dequantize_codes(codes[stage], zero[g, stage], scale[g, stage])[:, None] * chosen
            roots.append(idx)
            scodes.append(np.stack([pack_codes(c, sb) for c in codes]))
        return cls(w.shape, "float64", grid, p, seed, config, roots=roots, scodes=scodes, scale=scale, zero=zero)

    def dequantize_group(self, index: int) -> np.ndarray:
        m, n = self.grid.group_shapes()[index]
        count = chunk_count((m, n))
        out = np.zeros((count, CHUNK))
        table = e8_roots()
        for stage in range(self.bits):
            alpha = dequantize_codes(unpack_codes(self.scodes[index][stage], count), self.zero[index, stage],
                                     self.scale[index, stage])
            out += alpha[:, None] * table[self.roots[index][stage]]
        return out.reshape(-1)[:m * n].reshape(m, n)

    def group_bits(self, index: int) -> int:
        count = chunk_count(self.grid.group_shapes()[index])
        return self.bits * (count * (8 + self.config.scale_bits) + 64)

    def check_content(self) -> None:
        for g, idx in enumerate(self.roots):
            if idx.size and idx.max() >= ROOTS:
                raise ValueError(f"group {g} has a root index >= {ROOTS}")


__all__ = ["LVQConfig", "LVQMatrix", "chunk_count", "e8_roots", "nearest_roots"]
