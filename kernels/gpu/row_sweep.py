"""The solver's Gauss-Seidel row sweep as a Triton kernel (NVIDIA GPUs; CPU through TRITON_INTERPRET=1).

:func:`row_sweep`, named like the numba :func:`bqq_kernels.cpu.row_sweep`, does the same update: for row i of
problem b and its entries j = 0..l-1 in order, with h = X V and G = VᵀV (diagonal set to the row
count of V), the local field is f_j = 2α (h_ij - α (Σ_k G_jk u_ik - G_jj u_ij)) and u_ij becomes
tanh(f_j / T) (soft: the numba ``fast_tanh``, the [7/6] Padé approximant, exactly ±1 from |f/T| >= 4.97)
or sign(f_j), kept at f_j = 0 (hard). Rows are independent given G, so a program owns ``BLOCK_R`` rows
of one problem and runs the sequential loop over the l entries itself.

Layout: u and h are passed entry-major, (B, l, R) (the transposes of the numba kernel's (B, R, l)),
so that entry j of a program's rows is one contiguous vector and the (entries × rows) tiles below sit
with one row per thread: the per-entry work of a row (its field, tanh, and the read of one G·u value)
stays inside one thread, with no cross-thread reductions or layout conversions on the sequential path
(checked in the compiled TTGIR/SASS for the defaults: no shuffles, no shared memory).

How G·u is kept differs from the numba kernel, which is handed U G and updates the whole l-vector of
a row after each entry. Here the entries are taken in blocks J of ``BLOCK_J``:

1. at the start of block J, (G·u)[J, rows] is summed from the rows' current u (earlier blocks
   already updated and stored) as l outer products G[J, k] u[k, rows] (G is symmetric);
2. the entries of J are swept one by one, keeping only that (BLOCK_J, BLOCK_R) tile of G·u up to
   date (rank-1 updates with G[j, J]);
3. the block's new u is stored once at its end.

The arithmetic per entry is the numba kernel's; G·u is summed in another order (fresh per block
instead of increments on a BLAS product), so results agree to float32 rounding, not bit for bit, and
the caller needs no U G product.

Sign changes are counted per row in int32 and written once per program (no atomics); the caller sums
them, so results are deterministic. A program never reads what another program writes, and its own
stores of u are ordered against its reads by barriers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

# Launch defaults for compiled runs, chosen from the compiled code only (Triton 3.9, sm_90 target: 105
# registers, no spills, no shared memory, no shuffles) and NOT timed: no GPU was available when they were set.
# `benchmarks/solver.py --device cuda --tune` times alternatives. Results do not depend on BLOCK_ROWS,
# NUM_WARPS or UNROLL (every row sees the same arithmetic); BLOCK_COLS changes float32 rounding only.
BLOCK_ROWS = 32  # rows per program: one row per thread with one warp
BLOCK_COLS = 16  # entries per block (the G·u tile kept per row: BLOCK_COLS registers)
NUM_WARPS = 1
UNROLL = 4  # unrolling of the G·u accumulation loop (independent loads in flight)


@triton.jit
def mean_field_update(field, beta, old, HARD: tl.constexpr):
    """An entry's new value from its local field: sign(field), ``old`` at 0 (HARD), else tanh(field·beta) by
    the numba ``fast_tanh``, the [7/6] Padé approximant of tanh, exactly ±1 from |x| >= 4.97; x is clamped
    first so that huge fields do not overflow x² into inf/inf = NaN before the select."""
    if HARD:
        new = tl.where(field > 0, 1.0, tl.where(field < 0, -1.0, old))
    else:
        x = field * beta
        xs = tl.minimum(tl.maximum(x, -4.97), 4.97)
        x2 = xs * xs
        num = 135135.0 + x2 * (17325.0 + x2 * (378.0 + x2))
        den = 135135.0 + x2 * (62370.0 + x2 * (3150.0 + x2 * 28.0))
        new = tl.where(x >= 4.97, 1.0, tl.where(x <= -4.97, -1.0, xs * num / den))
    return new


@triton.jit
def _row_sweep_kernel(h_ptr, u_ptr, g_ptr, alpha_ptr, beta_ptr, flips_ptr, rows, l,
                      HARD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr,
                      UNROLL: tl.constexpr):
    # u and h are stored entry-major, (B, l, rows): entry j of all the program's rows is one contiguous
    # vector, and the (entries, rows) tiles put rows along threads, so a row's entries sit in one thread.
    b = tl.program_id(0)  # (the batch on the grid's x axis: y and z are limited to 65535)
    pid_r = tl.program_id(1)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = offs_r < rows
    blk = tl.arange(0, BLOCK_J)
    base = b.to(tl.int64) * l * rows  # u and h of problem b
    g_base = b.to(tl.int64) * l * l
    a = tl.load(alpha_ptr + b)
    beta = tl.load(beta_ptr + b)
    two_a = 2.0 * a
    count = tl.zeros((BLOCK_R,), dtype=tl.int32)
    for j0 in range(0, l, BLOCK_J):
        jcols = j0 + blk
        # (G·u)[J, rows] from the rows' current u (entries before j0 already updated), one entry k at a
        # time as outer products (G is symmetric: G[J, k] = G[k, J], a contiguous row). Plain FMAs keep
        # the tile in the rows-along-threads layout of the loop below (a tl.dot would impose its own
        # layout and a shared-memory layout conversion at every entry).
        gu = tl.zeros((BLOCK_J, BLOCK_R), dtype=tl.float32)
        for k in tl.range(0, l, loop_unroll_factor=UNROLL):
            g_k = tl.load(g_ptr + g_base + k * l + jcols, mask=jcols < l, other=0.0)
            u_k = tl.load(u_ptr + base + k * rows + offs_r, mask=row_ok, other=0.0)
            gu += g_k[:, None] * u_k[None, :]
        u_blk = tl.zeros((BLOCK_J, BLOCK_R), dtype=tl.float32)
        for jj in range(0, tl.minimum(BLOCK_J, l - j0)):
            j = j0 + jj
            # Entry j of u is not written before the end of this block: its old value is in memory.
            # Rows past the end load 0 everywhere, so their field is 0 and they never change.
            old = tl.load(u_ptr + base + j * rows + offs_r, mask=row_ok, other=0.0)
            hj = tl.load(h_ptr + base + j * rows + offs_r, mask=row_ok, other=0.0)
            gjj = tl.load(g_ptr + g_base + j * l + j)
            guj = tl.sum(tl.where(blk[:, None] == jj, gu, 0.0), axis=0)
            field = two_a * (hj - a * (guj - gjj * old))
            new = mean_field_update(field, beta, old, HARD)
            count += ((new > 0) != (old > 0)).to(tl.int32)
            u_blk = tl.where(blk[:, None] == jj, new[None, :], u_blk)
            g_row = tl.load(g_ptr + g_base + j * l + jcols, mask=jcols < l, other=0.0)
            gu += g_row[:, None] * (new - old)[None, :]
        # All reads of this block's u (the product's operand and the per-entry loads) happen before the
        # stores, and the stores before the next block's reads, across all threads of the program.
        tl.debug_barrier()
        tl.store(u_ptr + base + jcols[:, None] * rows + offs_r[None, :], u_blk,
                 mask=(jcols[:, None] < l) & row_ok[None, :])
        tl.debug_barrier()
    tl.store(flips_ptr + b * tl.num_programs(1) + pid_r, tl.sum(count, axis=0))


def interpreted() -> bool:
    """Whether this kernel runs in Triton's interpreter (TRITON_INTERPRET=1 when it was defined).

    Interpreted it takes CPU tensors (the tests run it so without a GPU); compiled, only GPU ones.
    """
    return isinstance(_row_sweep_kernel, InterpretedFunction)


def compile_report(arch: int = 90, launch: dict[str, int] | None = None) -> list[dict]:
    """Compile the kernel (soft and hard) for sm_<arch> without a GPU and read its machine code.

    Runs Triton's lowering and the ptxas it ships, so lowering errors show on a machine without a GPU or
    driver; per mode: registers and stack bytes (spills), and the counts of local-memory (LDL/STL),
    shuffle (SHFL) and shared-memory (LDS) instructions in the SASS when a cuobjdump is at hand. Says
    nothing about speed. Needs the compiled kernel: TRITON_INTERPRET unset or 0 at import.
    """
    import os
    import re
    import shutil
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if interpreted():
        raise RuntimeError("TRITON_INTERPRET=1 is set: the interpreted kernel cannot be compiled")
    opts = launch or {"block_rows": BLOCK_ROWS, "block_cols": BLOCK_COLS, "num_warps": NUM_WARPS, "unroll": UNROLL}
    kinds = {"h_ptr": "*fp32", "u_ptr": "*fp32", "g_ptr": "*fp32", "alpha_ptr": "*fp32", "beta_ptr": "*fp32",
             "flips_ptr": "*i32", "rows": "i32", "l": "i32"}
    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    tool = bundled if os.path.exists(bundled) else shutil.which("cuobjdump")
    rows = []
    for hard in (False, True):
        constexprs = {"HARD": hard, "BLOCK_R": opts["block_rows"], "BLOCK_J": opts["block_cols"],
                      "UNROLL": opts["unroll"]}
        signature = {name: "constexpr" if name in constexprs else kinds[name] for name in _row_sweep_kernel.arg_names}
        src = ASTSource(fn=_row_sweep_kernel, signature=signature, constexprs=constexprs)
        kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                options={"num_warps": opts["num_warps"], "enable_fp_fusion": True})
        row = {"hard": hard, **opts, "shared_bytes": kernel.metadata.shared}
        if tool is not None:
            with tempfile.TemporaryDirectory() as tmp:
                cubin = os.path.join(tmp, "row_sweep.cubin")
                with open(cubin, "wb") as f:
                    f.write(kernel.asm["cubin"])
                usage = subprocess.run([tool, "-res-usage", cubin], capture_output=True, text=True).stdout
                sass = subprocess.run([tool, "-sass", cubin], capture_output=True, text=True).stdout
            row |= {key.lower(): int(value) for key, value in re.findall(r"(REG|STACK):(\d+)", usage)}
            row |= {op: len(re.findall(rf"\b{op}\b", sass)) for op in ("LDL", "STL", "SHFL", "LDS")}
        rows.append(row)
    return rows


def launch_options(rows: int, l: int) -> dict[str, int]:
    """Launch shape for ``rows`` rows of inner dimension ``l``: the compiled defaults, or under the
    interpreter (which runs programs one after another and pays per operation, not per element) one
    program per problem and one block of entries."""
    if interpreted():
        return {"block_rows": min(256, triton.next_power_of_2(max(rows, 1))),
                "block_cols": min(64, triton.next_power_of_2(max(l, 1))), "num_warps": 1, "unroll": 1}
    return {"block_rows": BLOCK_ROWS, "block_cols": BLOCK_COLS, "num_warps": NUM_WARPS, "unroll": UNROLL}


def row_sweep(ht: torch.Tensor, ut: torch.Tensor, g: torch.Tensor, alpha: torch.Tensor,
              inv_temp: torch.Tensor, hard: bool, *, block_rows: int = BLOCK_ROWS,
              block_cols: int = BLOCK_COLS, num_warps: int = NUM_WARPS, unroll: int = UNROLL,
              count: bool = True) -> torch.Tensor | None:
    """One Gauss-Seidel pass over every entry of u, in place; returns the number of sign changes.

    Args:
        ht: (B, l, R) float32, (X V)ᵀ for the R rows being updated (entry-major).
        ut: (B, l, R) float32, uᵀ: magnetizations (soft) or ±1 signs (hard); updated in place.
        g: (B, l, l) float32, VᵀV with its diagonal set to V's row count (symmetric).
        alpha: (B,) float32 scale α; inv_temp: (B,) float32 1/T (unused when ``hard``).
        hard: sign updates (T = 0) instead of tanh.
        block_rows, block_cols: rows per program and entries per block (powers of two).
        num_warps, unroll: launch shape and unrolling of the G·u loop.
        count: return the number of sign changes (False: None, two launches fewer; for soft sweeps).

    Returns:
        A 0-d int64 tensor on ut's device: entries whose sign changed (as in the numba kernel: the
        test is value > 0, so 0 counts as negative). Computed asynchronously; reading it synchronizes.

    All tensors contiguous on one device: CUDA, or the CPU when :func:`interpreted`.
    """
    nbatch, l, rows = ut.shape
    if ht.shape != ut.shape or g.shape != (nbatch, l, l) or alpha.shape != (nbatch,) or inv_temp.shape != (nbatch,):
        raise ValueError(f"shapes do not match: ht {tuple(ht.shape)}, ut {tuple(ut.shape)}, g {tuple(g.shape)}, "
                         f"alpha {tuple(alpha.shape)}, inv_temp {tuple(inv_temp.shape)}")
    tensors = (ht, ut, g, alpha, inv_temp)
    if any(t.dtype != torch.float32 or not t.is_contiguous() or t.device != ut.device for t in tensors):
        raise ValueError("ht, ut, g, alpha and inv_temp must be contiguous float32 tensors on one device")
    if ut.device.type != "cuda" and not interpreted():
        raise RuntimeError(f"row_sweep got {ut.device.type} tensors: compiled Triton kernels need CUDA "
                           "tensors (CPU tensors only work in the interpreter, TRITON_INTERPRET=1 set before "
                           "bqq_kernels.gpu is imported)")
    for name, size in (("block_rows", block_rows), ("block_cols", block_cols), ("unroll", unroll),
                       ("num_warps", num_warps)):
        if size < 1 or size & (size - 1):
            raise ValueError(f"{name} must be a power of two, got {size}")
    grid = (nbatch, triton.cdiv(rows, block_rows))
    # One int32 count per program, written by it (every program writes its slot: no clearing needed).
    flips = torch.empty(nbatch * grid[1], dtype=torch.int32, device=ut.device)
    if nbatch and rows and l:
        _row_sweep_kernel[grid](ht, ut, g, alpha, inv_temp, flips, rows, l, HARD=bool(hard), BLOCK_R=block_rows,
                                BLOCK_J=block_cols, UNROLL=unroll, num_warps=num_warps,
                                enable_fp_fusion=True)  # (FMAs; explicit: Triton's default is changing)
    elif count:
        flips.zero_()
    return flips.sum(dtype=torch.int64) if count else None


row_sweep_triton = row_sweep  # the name before the sweeps were named alike on both devices (benchmarks use it)
