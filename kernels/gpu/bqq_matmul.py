"""x·Ŵᵀ + bias for a BQQ layer on NVIDIA GPUs (Triton; on CPU tensors through TRITON_INTERPRET=1).

Three paths, all deterministic (no atomics; every output is summed in a fixed order):

* ``decode`` (few tokens): the factored form v = Z x, out = Y (r v) + ... in two kernels
  (:mod:`kernels.gpu.factored`; a third adds partial sums for layers with many column blocks) on the
  CUDA cores in fp32. Each packed byte is read once per 16 tokens; at 2* the bits are 1/8 of an fp16
  weight's bytes.
* ``factored`` (more tokens, while they are few beside the groups' ranks): the same kernels with
  ``tl.dot`` on tensor cores.
* ``rebuild`` (many tokens): Ŵ rebuilt in the activations' dtype by one kernel
  (:mod:`kernels.gpu.rebuild`), then ``F.linear`` (cuBLAS) on tensor cores.

:func:`choose_path` picks one from the token count and the layout's shapes with the switch points in
:data:`SWITCH_POINTS`. **The defaults are reasoned, not measured** (no GPU was available when they were
set): ``python -m benchmarks.kernels --device cuda`` times every path on every shape so that a GPU
session can set them.

No host synchronization and no Python loop over groups per call: everything the launch needs is in
the layout tensors' shapes (Python ints); group sizes, offsets and ranks are read by the kernels on
the device. So a forward can be captured in a CUDA graph and runs under ``torch.compile`` through
the op ``bqq::linear``. Activations may be float32, float16 or bfloat16; outputs have their dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from ..layout import LayoutTensors
from .factored import _sum_kernel, _y_kernel, _z_kernel
from .rebuild import _rebuild_kernel

PATHS = ("decode", "factored", "rebuild")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Switch points (unmeasured defaults; see the module docstring).
# decode up to this many tokens: its CUDA-core work grows with the tokens (p·M·N fused multiply-adds per
# token at 2*), while its bit traffic does not; the decode range is 1 to about 16 tokens.
DECODE_MAX_TOKENS = 16
# factored while tokens <= this × the layout's largest rank, else rebuild: per token the factored form
# costs about 1.5·p·M·N tensor-core multiply-adds (the second product twice: hi and lo) and
# 8·p·Σl bytes of intermediate traffic, the rebuild p·M·N·l̄ once plus cuBLAS; they cross near
# tokens ≈ rank at p = 2, and cuBLAS is the more efficient matmul, hence one half.
FACTORED_MAX_TOKENS_PER_RANK = 0.5


@dataclass
class SwitchPoints:
    """Where :func:`choose_path` switches; change ``bqq_kernels.gpu.SWITCH_POINTS``'s fields to retune."""

    decode_max_tokens: int = DECODE_MAX_TOKENS
    factored_max_tokens_per_rank: float = FACTORED_MAX_TOKENS_PER_RANK


SWITCH_POINTS = SwitchPoints()

# Tiles (unmeasured; chosen so that Triton 3.9 compiles every variant for sm_90 without register spills,
# see kernels/gpu/compile_check.py). Decode: tokens per program -> (Z rank rows, Z columns, Y output rows,
# Y rank columns): tokens × rows × columns <= 4096 fp32 products in registers; Y steps of 64 rank columns
# cover a 128-group's rank (64) in one step, since each step waits for memory.
DECODE_TILES = {1: (32, 128, 64, 64), 2: (32, 64, 32, 64), 4: (16, 64, 16, 64), 8: (16, 32, 8, 64),
                16: (8, 32, 8, 32)}
DECODE_WARPS = 4
FACTORED_TILES = (32, 64, 64, 32)  # tensor cores: (Z rank rows, Z columns, Y output rows, Y rank columns)
FACTORED_WARPS = 8  # at 4 warps the 64-token tiles spilled
# tokens per program of the factored path, at most (tl.dot needs >= 16); tf32x3 needs more registers
FACTORED_MAX_BLOCK_T = {torch.float16: 64, torch.bfloat16: 64, torch.float32: 32}
# Steps (column block, stack, rank chunk) per _y_kernel program, at most about (unmeasured): each step waits
# for packed bits from memory (~1 µs), so a group row's pairs are split over programs, whose partial sums
# _sum_kernel adds (one launch more, ~2 µs), when a row has more steps than this. 6 leaves DeiT-S's 384-groups
# (2 stacks × 3 steps of 64 ranks) unsplit and cuts a 4096-wide layer's 64 steps (128-groups) into 11.
Y_STEPS_PER_PROGRAM = 6
SUM_BLOCK = 1024  # outputs per _sum_kernel program
REBUILD_TILES = (64, 64, 32)  # (Ŵ rows, Ŵ columns, rank entries per step)
REBUILD_WARPS = 4


class LaunchConfig(NamedTuple):
    """Compile-time parameters of the two factored kernels for one call (also used by compile_check)."""

    block_t: int
    warps: int
    z: dict  # constexprs of _z_kernel
    y: dict  # constexprs of _y_kernel, except HAS_BIAS and FINAL


def interpreted() -> bool:
    """Whether these kernels run in Triton's interpreter (TRITON_INTERPRET=1 when they were defined).

    Interpreted, they take CPU tensors (the tests run them so without a GPU); compiled, only GPU ones.
    """
    return isinstance(_z_kernel, InterpretedFunction)


_UPCAST_BF16 = interpreted()  # the interpreter's tl.dot misreads bfloat16 (see bits.mma)
_TL_DTYPE = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def choose_path(tokens: int, w: LayoutTensors, points: SwitchPoints | None = None) -> str:
    """The path :func:`bqq_linear_triton` takes for ``tokens`` rows of input on layout ``w``
    (with ``points``, default :data:`SWITCH_POINTS`)."""
    return path_for(tokens, w.z.shape[3], points or SWITCH_POINTS)  # z: (R, C, P, Lmax, NB)


def path_for(tokens: int, max_rank: int, points: SwitchPoints) -> str:
    """The rule of :func:`choose_path` for a layout whose largest rank is ``max_rank``."""
    if tokens <= points.decode_max_tokens:
        return "decode"
    if tokens <= points.factored_max_tokens_per_rank * max_rank:
        return "factored"
    return "rebuild"


def bqq_linear_triton(x: torch.Tensor, w: LayoutTensors, out_features: int, bias: torch.Tensor | None = None,
                      *, path: str | None = None) -> torch.Tensor:
    """x (..., N) -> x Ŵᵀ + bias (..., M) in x's dtype (float32, float16 or bfloat16).

    ``w`` and ``bias`` (M,) on x's device: a CUDA device, or the CPU when :func:`interpreted`.
    ``path``: one of :data:`PATHS` (None: :func:`choose_path`). Raises ValueError for another dtype or path.
    """
    if x.dtype not in DTYPES:
        raise ValueError(f"the Triton BQQ kernels take {[str(d) for d in DTYPES]}, got {x.dtype}")
    n = x.shape[-1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, n)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    tokens = x2.shape[0]
    if tokens == 0:
        return x.new_empty((*lead, out_features))
    if bias is not None and not bias.is_contiguous():
        bias = bias.contiguous()  # the kernels index it with unit stride
    path = path or choose_path(tokens, w)
    if path == "rebuild":
        out = _rebuild_linear(x2, w, out_features, bias)
    elif path in ("decode", "factored"):
        out = _factored_linear(x2, w, out_features, bias, dot=path == "factored")
    else:
        raise ValueError(f"unknown path {path!r}; paths: {PATHS}")
    return out.reshape(*lead, out_features)


def linear_decode(x: torch.Tensor, w: LayoutTensors, out_features: int,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`bqq_linear_triton` on the decode path (backend ``triton-decode``)."""
    return bqq_linear_triton(x, w, out_features, bias, path="decode")


def linear_factored(x: torch.Tensor, w: LayoutTensors, out_features: int,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`bqq_linear_triton` on the factored tensor-core path (backend ``triton-factored``)."""
    return bqq_linear_triton(x, w, out_features, bias, path="factored")


def linear_rebuild(x: torch.Tensor, w: LayoutTensors, out_features: int,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`bqq_linear_triton` on the rebuild + cuBLAS path (backend ``triton-rebuild``)."""
    return bqq_linear_triton(x, w, out_features, bias, path="rebuild")


def _factored_linear(x: torch.Tensor, w: LayoutTensors, out_features: int, bias: torch.Tensor | None,
                     *, dot: bool) -> torch.Tensor:
    """x (T, N) contiguous -> (T, M) through v = Z x (work buffer), the Y kernel and, when a group row's
    (column block, stack) pairs are split over programs, the in-order sum of their partials."""
    tokens, n = x.shape
    rows, cols, stacks, l_max, nb = w.z.shape
    m_max, lb = w.y.shape[3], w.y.shape[4]
    v_cols = rows * cols * stacks * l_max  # v per token, then Σx per column block
    work = torch.empty(tokens, v_cols + cols, dtype=torch.float32, device=x.device)
    out = torch.empty(tokens, out_features, dtype=x.dtype, device=x.device)
    cfg = factored_config(tokens, x.dtype, dot)
    t_tiles = triton.cdiv(tokens, cfg.block_t)
    # group axes first: CUDA caps grid axes 1 and 2 at 65535 (token tiles stay below that up to a million
    # tokens, which choose_path sends to the rebuild long before)
    _z_kernel[(rows * cols * stacks, t_tiles, triton.cdiv(l_max, cfg.z["BK"]))](
        x, w.z, work, w.col_start, w.col_size, w.rank, tokens, n, cols, stacks, l_max, nb, v_cols + cols, v_cols,
        **cfg.z, num_warps=cfg.warps)
    pairs_per_split, splits = split_pairs(cols * stacks, triton.cdiv(l_max, cfg.y["BK"]))
    m_tiles = triton.cdiv(m_max, cfg.y["BM"])
    target = out if splits == 1 else torch.empty(splits, tokens, out_features, dtype=torch.float32, device=x.device)
    _y_kernel[(rows, t_tiles, m_tiles * splits)](
        work, w.y, w.r, w.t, w.rowterm, out if bias is None else bias, target, w.row_start, w.row_size,
        tokens, out_features, cols, stacks, l_max, lb, m_max, v_cols + cols, v_cols, m_tiles, pairs_per_split,
        HAS_BIAS=bias is not None, FINAL=splits == 1, **cfg.y, num_warps=cfg.warps)
    if splits > 1:
        count = tokens * out_features
        _sum_kernel[(triton.cdiv(count, SUM_BLOCK),)](target, out if bias is None else bias, out, count,
                                                      out_features, splits, HAS_BIAS=bias is not None,
                                                      BLOCK=SUM_BLOCK)
    return out


def split_pairs(pairs: int, chunks: int) -> tuple[int, int]:
    """(pairs per split, splits) for a group row of ``pairs`` (column block, stack) pairs of ``chunks`` rank
    chunks each: the fewest splits with at most about Y_STEPS_PER_PROGRAM steps each."""
    splits = min(pairs, max(1, triton.cdiv(pairs * chunks, Y_STEPS_PER_PROGRAM)))
    per_split = triton.cdiv(pairs, splits)
    return per_split, triton.cdiv(pairs, per_split)


def factored_config(tokens: int, dtype: torch.dtype, dot: bool) -> LaunchConfig:
    """Tiles and constexprs of the decode (``dot`` False) or factored path for ``tokens`` rows of ``dtype``."""
    if dot:
        bt = min(FACTORED_MAX_BLOCK_T[dtype], max(16, triton.next_power_of_2(tokens)))
        z_bk, z_bn, y_bm, y_bk = FACTORED_TILES
        warps = FACTORED_WARPS
    else:
        bt = min(16, triton.next_power_of_2(tokens))
        z_bk, z_bn, y_bm, y_bk = DECODE_TILES[bt]
        warps = DECODE_WARPS
    half = dtype != torch.float32
    precision = "tf32" if half else "tf32x3"  # "tf32" is tl.dot's default and has no effect on fp16/bf16
    z = {"BT": bt, "BK": z_bk, "BN": z_bn, "DOT": dot, "DOT_DTYPE": _TL_DTYPE[dtype], "PRECISION": precision,
         "UPCAST": _UPCAST_BF16 and dtype == torch.bfloat16}
    y = {"BT": bt, "BM": y_bm, "BK": y_bk, "DOT": dot, "SPLIT": half, "PRECISION": precision,
         "UPCAST": _UPCAST_BF16 and half}
    return LaunchConfig(bt, warps, z, y)


def rebuild_weight(w: LayoutTensors, out_features: int, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    """Ŵ (M, N) in ``dtype`` (float32, float16 or bfloat16) on the layout's device, by one kernel launch."""
    rows, cols, stacks, l_max, nb = w.z.shape
    m_max, lb = w.y.shape[3], w.y.shape[4]
    bm, bn, bk = REBUILD_TILES
    weight = torch.empty(out_features, in_features, dtype=dtype, device=w.z.device)
    _rebuild_kernel[(rows * cols, triton.cdiv(m_max, bm), triton.cdiv(8 * nb, bn))](
        w.z, w.y, w.r, w.t, w.rowterm, w.row_start, w.row_size, w.col_start, w.col_size, w.rank, weight,
        in_features, cols, stacks, l_max, nb, lb, m_max, BM=bm, BN=bn, BK=bk, num_warps=REBUILD_WARPS)
    return weight


def _rebuild_linear(x: torch.Tensor, w: LayoutTensors, out_features: int, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, rebuild_weight(w, out_features, x.shape[1], x.dtype), bias)
