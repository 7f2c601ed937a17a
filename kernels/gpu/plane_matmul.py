"""x·Ŵᵀ + bias for a bit-plane layer (UQ, GPTQ, BCQ) on NVIDIA GPUs (Triton; on CPU tensors through
TRITON_INTERPRET=1).

**What.** A :class:`~kernels.layout.PlaneLayout` stores, per column block b (columns c0_b ... c0_b + n_b),
B packed binary planes P_i and per-row scalars:

    W[j, c0_b + c] = Σ_i coef[b, j, i] P_i[b, j, c] + offset[b, j]

:func:`plane_linear_triton` computes x Wᵀ + bias from those bytes; no dense weight is written to memory.

**How.** One kernel, grid (row tiles, token tiles). A program owns BM output rows and BT tokens and walks
the C column blocks, each in chunks of BN columns (the bound read from ``col_size`` on the device). Per
chunk it unpacks the B planes' bits (:func:`~kernels.gpu.bits.bit_tile`) into a (BM, BN) fp32 weight
tile in registers, Σ_i coef_i P_i + offset, and multiplies it with the chunk of x (zero past the block's
width: the pad bits are zero, but the offset is not):

* few tokens (a token tile under 16, i.e. up to :data:`DECODE_MAX_TOKENS` tokens): broadcast multiply and
  ``tl.sum`` on the CUDA cores in fp32, the tile reused for every token of the program;
* more tokens: ``tl.dot`` on tensor cores with fp32 accumulation, the tile rounded to the activations'
  dtype (fp16 / bf16, as a dense fp16 / bf16 weight would be), or for fp32 activations ``tf32x3`` (about
  fp32 accuracy). The weight tile is the left operand, so that the MMA's M side is BM rows and small
  token tiles (16) still fill it.

The epilogue adds the bias and stores in x's dtype.

**Why.** Every packed byte is read once per token tile, and a weight is B/8 bytes (a fp16 weight is 2), so
at decode (one token tile) the traffic is the bits. Unpacking costs a few integer and float operations
per plane and weight, paid once per token tile: at decode with many planes that work, not the bytes,
may bound the kernel, and at many tokens a dense rebuild plus cuBLAS may beat it (as BQQ's ``rebuild``
path does); neither has been measured. No split over the columns: one program sums a row tile's whole
input width in a fixed order, so there are no atomics and no partial-sum pass, and the same inputs give
the same bits; at decode the grid has cdiv(M, BM) programs. No host synchronization: everything the launch
needs comes from tensor shapes, so a forward can be captured in a CUDA graph.

**The tiles are unmeasured defaults** (no GPU was available when they were set), chosen so that Triton 3.9
compiles every variant for sm_90 without register spills (``python -m bqq_kernels.gpu.compile_check --op
plane_linear``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from ..layout import PlaneTensors
from .bits import bit_tile, mma

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Tiles (unmeasured; see the module docstring). Triton lays these tiles out with a warp's lanes along the
# columns (seen in the TTGIR), so a thread holds BM / (warps along the rows) rows of the weight tile and of each
# per-row scalar: BM is what costs registers.
# CUDA-core path: tokens per program -> (BM rows, BN columns). BM = 16 everywhere: twice as many programs at
# decode as 32 rows (the grid is cdiv(M, BM) programs), and 32 rows at 128 columns spilled with 8 planes.
# BT × BM × BN <= 4096 products in registers (32 per thread at 4 warps), except at 8 tokens, where (16, 32)
# spilled 8 bytes in fp32 with 8 planes and (16, 64) did not; BN = 128 at one token reads 16 bytes per row
# and plane.
DECODE_TILES = {1: (16, 128), 2: (16, 64), 4: (16, 64), 8: (16, 64)}
DECODE_MAX_TOKENS = max(DECODE_TILES)  # token tiles of 16 and more go to the tensor cores (tl.dot needs >= 16)
DECODE_WARPS = 4
DOT_TILES = (64, 64)  # (BM rows, BN columns): 64 rows fill a warpgroup's MMA (the tile is its left operand)
# tokens per program of the tensor-core path, at most: more tokens per unpacked tile amortize the unpacking;
# tf32x3 (three products, split operands) needs more registers. At 4 warps these tiles spilled.
DOT_MAX_BLOCK_T = {torch.float16: 128, torch.bfloat16: 128, torch.float32: 64}
DOT_WARPS = 8

_TL_DTYPE = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


class PlaneConfig(NamedTuple):
    """The launch parameters of :func:`plane_linear_triton` for one call (also used by compile_check)."""

    block_m: int
    block_t: int
    warps: int
    constexprs: dict  # of _plane_kernel, except HAS_BIAS


@triton.jit(do_not_specialize=["tokens"])
def _plane_kernel(x_ptr, planes_ptr, coef_ptr, offset_ptr, col_start_ptr, col_size_ptr, bias_ptr, out_ptr,
                  tokens, n_in, n_out, n_cols, nb,
                  PLANES: tl.constexpr, HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                  BT: tl.constexpr, DOT: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                  UPCAST: tl.constexpr):
    """Grid (cdiv(M, BM), cdiv(T, BT)): out[t, j] = Σ_b Σ_c W[j, c0_b + c] x[t, c0_b + c] (+ bias_j) for BM rows
    j and BT tokens t, in fp32, stored in out's dtype.

    x (T, N), out (T, M) row-major; planes uint8 (C, PLANES, M, nb); coef fp32 (C, M, PLANES); offset fp32
    (C, M); col_start, col_size int32 (C,); bias (M,) (read only if HAS_BIAS).
    """
    pid_m = tl.program_id(0)
    pid_t = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    t_local = tl.arange(0, BT)
    m_ok = offs_m < n_out
    t_ok = pid_t * BT + t_local < tokens
    # The token tile's first row as one 64-bit pointer and 32-bit offsets within the tile (BT rows < 2^31
    # elements): a (BT, BN) tensor of 64-bit pointers would take two registers per element.
    t0 = (pid_t * BT).to(tl.int64)
    x_tile = x_ptr + t0 * n_in
    acc = tl.zeros((BM, BT), dtype=tl.float32)
    for b in range(0, n_cols):
        c0 = tl.load(col_start_ptr + b)
        nc = tl.load(col_size_ptr + b)
        block_rows = b * n_out + offs_m  # (BM,) row indices into the (C, M) scalars
        offset = tl.load(offset_ptr + block_rows, mask=m_ok, other=0.0)
        coef_rows = coef_ptr + block_rows * PLANES
        for n0 in range(0, nc, BN):
            offs_n = n0 + tl.arange(0, BN)
            # columns past the block's width must read 0: their weights there are the offset, not 0
            x = tl.load(x_tile + (t_local[:, None] * n_in + (c0 + offs_n)[None, :]),
                        mask=t_ok[:, None] & (offs_n[None, :] < nc), other=0.0)
            w = offset[:, None] + tl.zeros((BM, BN), dtype=tl.float32)
            # A loop, not unrolled: unrolled, the B per-row coefficient vectors (BM per thread each, see the
            # tiles) were hoisted out of the column loop and spilled at 8 planes.
            for i in range(PLANES):
                coef = tl.load(coef_rows + i, mask=m_ok, other=0.0)
                plane = (b * PLANES + i) * n_out  # first row of plane i of block b, as a row of (C·B·M, nb)
                bits = bit_tile(planes_ptr + plane.to(tl.int64) * nb, offs_m, n_out, n0 // 8, nb, nb, BM, BN)
                w += coef[:, None] * bits.to(tl.float32)
            if DOT:
                acc = mma(w, tl.trans(x), acc, DOT_DTYPE, PRECISION, UPCAST)
            else:
                acc += tl.sum(w[:, None, :] * x.to(tl.float32)[None, :, :], axis=2)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_m, mask=m_ok, other=0.0).to(tl.float32)[:, None]
    out = out_ptr + t0 * n_out + (t_local[None, :] * n_out + offs_m[:, None])
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & t_ok[None, :])


def interpreted() -> bool:
    """Whether the kernel runs in Triton's interpreter (TRITON_INTERPRET=1 when it was defined): then it
    takes CPU tensors; compiled, only CUDA ones."""
    return isinstance(_plane_kernel, InterpretedFunction)


_UPCAST_BF16 = interpreted()  # the interpreter's tl.dot misreads bfloat16 (see bits.mma)


def plane_config(tokens: int, dtype: torch.dtype, planes: int, dot: bool | None = None) -> PlaneConfig:
    """Tiles and constexprs for ``tokens`` rows of ``dtype`` activations on a layout of ``planes`` planes.

    ``dot``: None picks tensor cores when the token tile is 16 or more (over :data:`DECODE_MAX_TOKENS`
    tokens); True / False force tl.dot / the CUDA-core path (its token tile is then at most 8).
    """
    if dot is None:
        dot = tokens > DECODE_MAX_TOKENS
    if dot:
        bt = min(DOT_MAX_BLOCK_T[dtype], max(16, triton.next_power_of_2(tokens)))
        bm, bn = DOT_TILES
        warps = DOT_WARPS
    else:
        bt = min(DECODE_MAX_TOKENS, triton.next_power_of_2(tokens))
        bm, bn = DECODE_TILES[bt]
        warps = DECODE_WARPS
    # "tf32" is tl.dot's default and has no effect on fp16/bf16 operands
    precision = "tf32x3" if dtype == torch.float32 else "tf32"
    constexprs = {"PLANES": planes, "BM": bm, "BN": bn, "BT": bt, "DOT": dot, "DOT_DTYPE": _TL_DTYPE[dtype],
                  "PRECISION": precision, "UPCAST": _UPCAST_BF16 and dtype == torch.bfloat16}
    return PlaneConfig(bm, bt, warps, constexprs)


def plane_linear_triton(x: torch.Tensor, w: PlaneTensors, out_features: int, bias: torch.Tensor | None = None,
                        *, dot: bool | None = None) -> torch.Tensor:
    """x (..., N) -> x Ŵᵀ + bias (..., M) in x's dtype (float32, float16 or bfloat16), one kernel launch.

    ``w`` (a PlaneLayout's tensors: planes uint8 (C, B, M, NB), coef float32 (C, M, B), offset float32
    (C, M), col_start / col_size int32 (C,)) and ``bias`` (M,) on x's device: a CUDA device, or the CPU
    when :func:`interpreted`. ``dot``: see :func:`plane_config`. Raises ValueError for another dtype or a
    layout whose row count is not ``out_features``.
    """
    if x.dtype not in DTYPES:
        raise ValueError(f"the Triton plane kernel takes {[str(d) for d in DTYPES]}, got {x.dtype}")
    cols, planes, m, nb = w.planes.shape
    if m != out_features:
        raise ValueError(f"the layout has {m} rows, expected out_features = {out_features}")
    n = x.shape[-1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, n)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    tokens = x2.shape[0]
    out = torch.empty(tokens, out_features, dtype=x.dtype, device=x.device)
    if tokens == 0 or out_features == 0:
        return out.reshape(*lead, out_features)
    # the kernel indexes every tensor as row-major (layouts are built so; a no-op check then)
    planes_t, coef, offset, col_start, col_size = (t if t.is_contiguous() else t.contiguous() for t in w)
    if bias is not None and not bias.is_contiguous():
        bias = bias.contiguous()
    cfg = plane_config(tokens, x.dtype, planes, dot)
    grid = (triton.cdiv(out_features, cfg.block_m), triton.cdiv(tokens, cfg.block_t))
    _plane_kernel[grid](x2, planes_t, coef, offset, col_start, col_size, out if bias is None else bias, out,
                        tokens, n, out_features, cols, nb, HAS_BIAS=bias is not None, **cfg.constexprs,
                        num_warps=cfg.warps)
    return out.reshape(*lead, out_features)
