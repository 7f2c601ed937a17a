"""Compile the Triton kernels for an NVIDIA GPU on a machine without one, and report the machine code.

    TRITON_INTERPRET=0 python -m bqq_kernels.gpu.compile_check [--arch 90] [--quick] [--json]
                                                               [--op {linear,plane_linear,all}]

Triton lowers every launch configuration of an op family with the ptxas it ships, so lowering errors
show without a GPU or driver: for ``linear`` (the default), those :mod:`kernels.gpu.bqq_matmul` uses
(decode at 1 to 16 tokens per program, factored, rebuild); for ``plane_linear``, those of
:mod:`kernels.gpu.plane_matmul` (CUDA cores at 1 to 8 tokens per program, tensor cores at the largest
token tile; 1, 4 and 8 planes); fp16, bf16, fp32 activations. ``--quick``: fp16 and fp32, 1 and the
largest CUDA-core token tile, 8 planes. Per variant the report gives registers, stack bytes (spills), and
the counts of tensor-core (HGMMA on Hopper, HMMA), FFMA and local-memory (LDL/STL) instructions in the SASS
(static counts, not executed ones). It says nothing about speed. Interpreted kernels cannot be compiled:
run it with TRITON_INTERPRET unset or 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import bqq_matmul, plane_matmul
from .factored import _sum_kernel, _y_kernel, _z_kernel
from .rebuild import _rebuild_kernel

_SASS_OPS = ("HGMMA", "HMMA", "FFMA", "LDL", "STL")
_TYPE = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}
_BYTES = ("z_ptr", "y_ptr", "planes_ptr")
_FLOATS = ("work_ptr", "r_ptr", "t_ptr", "rowterm_ptr", "partial_ptr", "coef_ptr", "offset_ptr")
_INTS = ("row_start_ptr", "row_size_ptr", "col_start_ptr", "col_size_ptr", "rank_ptr")
OPS = ("linear", "plane_linear")  # the op families (kernels.dispatch) whose kernels this compiles


def _signature(fn, dtype: torch.dtype, constexprs: dict) -> dict[str, str]:
    """Triton argument types by name: packed bits u8, layout floats fp32, indices i32, activations ``dtype``."""
    def kind(name: str) -> str:
        if name in constexprs:
            return "constexpr"
        if name in _BYTES:
            return "*u8"
        if name in _FLOATS:
            return "*fp32"
        if name in _INTS:
            return "*i32"
        return _TYPE[dtype] if name.endswith("_ptr") else "i32"

    return {name: kind(name) for name in fn.arg_names}


def variants(quick: bool = False, ops: tuple[str, ...] = ("linear",)
             ) -> list[tuple[str, object, torch.dtype, dict, int]]:
    """(label, kernel, activation dtype, constexprs, warps) of the launches the op families ``ops`` make."""
    dtypes = (torch.float16, torch.float32) if quick else (torch.float16, torch.bfloat16, torch.float32)
    out = []
    if "linear" in ops:
        out += _bqq_variants(quick, dtypes)
    if "plane_linear" in ops:
        out += _plane_variants(quick, dtypes)
    return out


def _bqq_variants(quick: bool, dtypes: tuple[torch.dtype, ...]) -> list[tuple[str, object, torch.dtype, dict, int]]:
    out = []
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        configs = [(f"decode T{t}", bqq_matmul.factored_config(t, dtype, False))
                   for t in ((1, 16) if quick else tuple(bqq_matmul.DECODE_TILES))]
        configs.append(("factored", bqq_matmul.factored_config(1 << 20, dtype, True)))  # the largest token tile
        for label, cfg in configs:
            out.append((f"{label} z {name}", _z_kernel, dtype, cfg.z, cfg.warps))
            # FINAL False: the partial sums that layers of more than Y_STEPS_PER_PROGRAM steps per row write
            out.append((f"{label} y {name}", _y_kernel, dtype, {**cfg.y, "HAS_BIAS": True, "FINAL": False},
                        cfg.warps))
        out.append((f"sum {name}", _sum_kernel, dtype, {"HAS_BIAS": True, "BLOCK": bqq_matmul.SUM_BLOCK}, 4))
        bm, bn, bk = bqq_matmul.REBUILD_TILES
        out.append((f"rebuild {name}", _rebuild_kernel, dtype, {"BM": bm, "BN": bn, "BK": bk},
                    bqq_matmul.REBUILD_WARPS))
    return out


def _plane_variants(quick: bool, dtypes: tuple[torch.dtype, ...]) -> list[tuple[str, object, torch.dtype, dict, int]]:
    """The plane kernel at each CUDA-core token tile and at the largest tensor-core one. The planes are
    unrolled, so more planes hold more loads in flight: 8 (the most) is the register-heaviest."""
    out = []
    tiles = (1, plane_matmul.DECODE_MAX_TOKENS) if quick else tuple(plane_matmul.DECODE_TILES)
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        for planes in (8,) if quick else (1, 4, 8):
            configs = [(f"plane T{t}", plane_matmul.plane_config(t, dtype, planes, dot=False)) for t in tiles]
            configs.append(("plane dot", plane_matmul.plane_config(1 << 20, dtype, planes, dot=True)))
            for label, cfg in configs:
                out.append((f"{label} B{planes} {name}", plane_matmul._plane_kernel, dtype,
                            {**cfg.constexprs, "HAS_BIAS": True}, cfg.warps))
    return out


def _cuobjdump() -> str | None:
    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return bundled if os.path.exists(bundled) else shutil.which("cuobjdump")


def compile_variant(fn, dtype: torch.dtype, constexprs: dict, warps: int, arch: int = 90) -> dict:
    """Compile one launch configuration for sm_<arch>; registers, stack bytes and SASS counts (when a
    cuobjdump is at hand). Raises what Triton raises if lowering fails."""
    src = ASTSource(fn=fn, signature=_signature(fn, dtype, constexprs), constexprs=constexprs)
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
    tool = _cuobjdump()
    if tool is None:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(kernel.asm["cubin"])
        usage = subprocess.run([tool, "-res-usage", cubin], capture_output=True, text=True).stdout
        sass = subprocess.run([tool, "-sass", cubin], capture_output=True, text=True).stdout
    info = {key.lower(): int(value) for key, value in re.findall(r"(REG|STACK):(\d+)", usage)}
    info.update({op: len(re.findall(rf"\b{op}\b", sass)) for op in _SASS_OPS})
    return info


def report(arch: int = 90, quick: bool = False, ops: tuple[str, ...] = ("linear",)) -> list[dict]:
    """One row per variant of the op families ``ops``: label, warps and :func:`compile_variant`'s fields."""
    rows = []
    for label, fn, dtype, constexprs, warps in variants(quick, ops):
        info = compile_variant(fn, dtype, constexprs, warps, arch)
        rows.append({"variant": label, "warps": warps, **info})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90, help="compute capability × 10 (90: Hopper)")
    p.add_argument("--quick", action="store_true",
                   help="fp16 and fp32; decode (linear) or the CUDA-core path (plane_linear) at 1 and the most "
                   "tokens per program only; 8 planes only")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    p.add_argument("--op", choices=(*OPS, "all"), default="linear",
                   help="the op family's kernels: linear (BQQ, the default), plane_linear (bit planes) or all")
    args = p.parse_args(argv)
    if bqq_matmul.interpreted() or plane_matmul.interpreted():
        raise SystemExit("TRITON_INTERPRET=1 is set: interpreted kernels cannot be compiled")
    rows = report(args.arch, args.quick, OPS if args.op == "all" else (args.op,))
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            print(f"{row['variant']:<26} " + " ".join(f"{k}={v}" for k, v in row.items() if k != "variant"))
    return rows


if __name__ == "__main__":
    main()
