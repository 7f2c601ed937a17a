"""The BQQ solver on a torch device (GPU): :mod:`bqq.solver`'s algorithm, batched over same-shape groups.

Same steps, settings and seeds as the CPU solver (see :mod:`bqq.solver` for the method):

1. the starts are drawn with numpy from the same per-problem SeedSequence as on the CPU, then moved
   to the device, so both paths start from identical magnetizations;
2. α, T_c (power iteration, float64), the geometric schedule and the aspect split as on the CPU;
3. each half-sweep is two batched GEMMs through torch (float32; TF32 off unless asked for) and the
   sequential row sweep in the Triton kernel :func:`bqq_kernels.gpu.row_sweep.row_sweep_triton`;
4. polish (hard sweeps with α refitted, until no entry flips) on the device;
5. :func:`refit_scalars_torch`: the exact least-squares refit of all 3p + 1 scalars of many groups
   at once, float64, equal to :func:`bqq.solver.refit_scalars` per group.

The factors are kept entry-major on the device, Uᵀ (B, l, m) and Vᵀ (B, l, n) (the kernel's layout;
Vᵀ > 0 is directly the {0,1} Z of the stack).

Results: same seeds, device, batch and library versions give bit-identical codes (no atomics
anywhere; the kernel counts sign changes per program). They are not bit-identical to the CPU path
(another summation order for G·u and in the GEMMs): the annealing trajectories part after a while
and the error agrees on average, not per bit. cuBLAS may pick another GEMM algorithm for another
batch size, so regrouping a batch can change codes at rounding level too.

Memory: the state is float32 X, Uᵀ, Vᵀ, X V and the Gram matrix per problem (plus what the caller
keeps); float64 temporaries are formed a slice of the batch at a time (``TRANSIENT_BYTES``), see
:func:`bytes_per_group` and :func:`groups_per_batch` for sizing batches.

Without a GPU the kernel runs in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1 set before
``bqq_kernels.gpu`` is imported): slow, for tests only.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch

from .solver import POWER_ITERATIONS

if TYPE_CHECKING:
    from .methods.bqq import BQQConfig
ArrayLike = np.ndarray | torch.Tensor


def _kernel_module() -> ModuleType:
    try:
        from bqq_kernels.gpu import row_sweep
    except ImportError as exc:
        if exc.name == "triton" or "triton" in str(exc):
            raise ImportError("bqq's GPU solver needs the 'triton' package: pip install 'bqq[gpu]' "
                              "(or pip install triton)") from exc
        raise
    return row_sweep


def resolve_device(device: str | torch.device | None, like: ArrayLike | None = None) -> torch.device:
    """The device to solve on: ``device``, else ``like``'s device if it is a tensor, else CUDA.

    Raises RuntimeError when the Triton kernel cannot run there (a non-CUDA device outside the
    interpreter, or CUDA requested without one).
    """
    if device is None:
        device = like.device if isinstance(like, torch.Tensor) else "cuda"
    device = torch.device(device)
    kernels = _kernel_module()
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' but torch sees no CUDA GPU (use the CPU solver, bqq.solver)")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif not (device.type == "cpu" and kernels.interpreted()):
        raise RuntimeError(f"the GPU solver runs on CUDA devices, not {device.type!r} (CPU tensors only in "
                           "Triton's interpreter, TRITON_INTERPRET=1, for tests; use bqq.solver on the CPU)")
    return device


@contextlib.contextmanager
def _fp32_matmuls(tf32: bool) -> Iterator[None]:
    """float32 GEMMs in full fp32 ("highest") unless ``tf32``; the caller's setting is restored after."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


# float64 temporaries (σ_max, α fits, the refit, dequantization) are formed a slice of the batch at a time,
# so that their memory is bounded by this, not proportional to the number of groups.
TRANSIENT_BYTES = 1 << 30


def _chunks(count: int, item_bytes: int) -> Iterator[slice]:
    size = max(1, TRANSIENT_BYTES // max(int(item_bytes), 1))
    for lo in range(0, count, size):
        yield slice(lo, min(lo + size, count))


def draw_starts(seeds: Sequence[Sequence[int]], m: int, n: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """The CPU solver's starts: per problem, U (m, l) then V (n, l) uniform in ±0.01 from its SeedSequence.

    Returns float32 arrays (B, m, l) and (B, n, l), identical to those of :func:`bqq.solver.solve_sign_factors`.
    """
    u = np.empty((len(seeds), m, rank), np.float32)
    v = np.empty((len(seeds), n, rank), np.float32)
    for b, seq in enumerate(seeds):
        rng = np.random.default_rng(np.random.SeedSequence(list(seq)))
        u[b] = rng.uniform(-0.01, 0.01, (m, rank))
        v[b] = rng.uniform(-0.01, 0.01, (n, rank))
    return u, v


def spectral_norm_torch(x: torch.Tensor, iters: int = POWER_ITERATIONS) -> torch.Tensor:
    """Largest singular value of each x[b], (B, m, n) float64 -> (B,), by power iteration on xᵀx.

    The numba :func:`bqq_kernels.cpu.spectral_norm`, batched: the same fixed start 1 + 0.5 sin(1 + k) and
    iteration count; a zero matrix gives 0.
    """
    nbatch, _, n = x.shape
    k = torch.arange(n, dtype=torch.float64, device=x.device)
    vec = (1.0 + 0.5 * torch.sin(1.0 + k)).expand(nbatch, n).unsqueeze(2)
    sigma = torch.zeros(nbatch, dtype=torch.float64, device=x.device)
    for _ in range(iters):
        norm = torch.linalg.vector_norm(vec, dim=(1, 2), keepdim=True)
        vec = vec / torch.where(norm > 0, norm, 1.0)
        tmp = torch.bmm(x, vec)
        sigma = torch.linalg.vector_norm(tmp, dim=(1, 2))
        vec = torch.bmm(x.mT, tmp)
    return sigma


def solve_sign_factors_torch(
    x: ArrayLike,
    rank: int,
    seeds: Sequence[Sequence[int]],
    *,
    sweeps: int,
    t_start: float,
    t_end: float,
    alpha_scale: float,
    polish_rounds: int,
    aspect_exponent: float = 0.7,
    device: str | torch.device | None = None,
    tf32: bool = False,
    launch: dict[str, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sign factors of a batch of residuals on a torch device (:func:`bqq.solver.solve_sign_factors`).

    Args:
        x: (B, m, n) residuals (numpy or torch; used as float64, the mean is removed here).
        rank: inner dimension l.
        seeds: B integer sequences, one per problem, seeding its start (as on the CPU).
        sweeps, t_start, t_end, alpha_scale, polish_rounds, aspect_exponent: as on the CPU.
        device: where to solve; None: x's device if x is a tensor, else the current CUDA device.
        tf32: allow TF32 in the float32 GEMMs (X V and the Gram matrices). Default False: full fp32.
        launch: kernel launch options (see :func:`bqq_kernels.gpu.row_sweep.launch_options`).

    Returns:
        U (B, m, l) and V (B, n, l) int8 in {-1, +1} on the device (views of the entry-major (B, l, ·)
        arrays, not contiguous), with X ≈ α U Vᵀ + row/col/const terms.
    """
    dev = resolve_device(device, x)
    # (Triton launches on the current CUDA device: make it the tensors' one.)
    on_device = torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()
    with _fp32_matmuls(tf32), on_device:
        ut, vt = _solve(x, rank, seeds, sweeps, t_start, t_end, alpha_scale, polish_rounds, aspect_exponent, dev,
                        launch)
    return ut.mT, vt.mT


def _solve(x, rank, seeds, sweeps, t_start, t_end, alpha_scale, polish_rounds, aspect_exponent, dev, launch):
    row_sweep = _kernel_module()
    nbatch, m, n = x.shape
    if len(seeds) != nbatch:
        raise ValueError(f"{len(seeds)} seeds for {nbatch} problems")
    xc = torch.empty(nbatch, m, n, dtype=torch.float32, device=dev)
    ut = torch.empty(nbatch, rank, m, dtype=torch.float32, device=dev)  # Uᵀ
    vt = torch.empty(nbatch, rank, n, dtype=torch.float32, device=dev)  # Vᵀ
    sigma = torch.empty(nbatch, dtype=torch.float64, device=dev)
    rms = torch.empty(nbatch, dtype=torch.float64, device=dev)
    for c in _chunks(nbatch, 28 * m * n):
        x64 = torch.as_tensor(x[c], dtype=torch.float64, device=dev)
        xc[c] = x64 - x64.mean(dim=(1, 2), keepdim=True)  # centered in float64, stored as float32
        del x64
        xd = xc[c].to(torch.float64)  # as on the CPU: rms and σ_max of the float32 X, in float64
        rms[c] = torch.sqrt((xd * xd).mean(dim=(1, 2)))
        sigma[c] = spectral_norm_torch(xd, POWER_ITERATIONS)
        del xd
        u0, v0 = draw_starts(seeds[c], m, n, rank)
        ut[c] = torch.from_numpy(u0).to(dev).mT
        vt[c] = torch.from_numpy(v0).to(dev).mT
    alpha = (alpha_scale * rms / math.sqrt(rank)).to(torch.float32)
    t_crit = 2.0 * alpha.to(torch.float64) * sigma
    # float32 as on the CPU (see bqq.solver); a (B,) tensor, since dividing by a scalar may be done as a
    # multiplication by its reciprocal (CUDA), which rounds differently.
    aspect = torch.full((nbatch,), float(np.float32((n / m) ** aspect_exponent)), dtype=torch.float32, device=dev)
    live = t_crit > 0  # a constant residual needs no binaries: its signs stay +1
    scaled = t_crit * t_start
    u_opts = launch or row_sweep.launch_options(m, rank)
    v_opts = launch or row_sweep.launch_options(n, rank)

    def half(xop, other, own, other_rows, a, inv_temp, hard, opts):
        # own ← sweep given other: h = (X V)ᵀ = Vᵀ Xᵀ (or Uᵀ X), G = VᵀV with diagonal = V's row count.
        ht = torch.bmm(other, xop)
        g = torch.bmm(other, other.mT)
        g.diagonal(dim1=1, dim2=2).fill_(other_rows)
        return row_sweep.row_sweep_triton(ht, own, g, a, inv_temp, hard, count=hard, **opts)

    ratio = t_end / t_start
    rows_per_block = max(1, (1 << 24) // max(nbatch, 1))  # schedule rows computed together (<= 128 MB)
    for k0 in range(0, sweeps, rows_per_block):
        # 1/T for sweeps k0.. at once: T_k = T_c·t_start·(t_end/t_start)^(k/(sweeps-1)), float64 as on the CPU.
        factors = torch.tensor([ratio ** (k / max(sweeps - 1, 1)) for k in range(k0, min(k0 + rows_per_block, sweeps))],
                               dtype=torch.float64, device=dev)
        temp = scaled[None, :] * factors[:, None]
        inv_temp = torch.where(live, 1.0 / torch.where(live, temp, 1.0), 0.0).to(torch.float32)
        inv_u, inv_v = inv_temp / aspect, inv_temp * aspect
        for i in range(len(factors)):
            half(xc.mT, vt, ut, n, alpha, inv_u[i], False, u_opts)
            half(xc, ut, vt, m, alpha, inv_v[i], False, v_opts)

    ut = torch.where(ut >= 0, 1.0, -1.0)
    vt = torch.where(vt >= 0, 1.0, -1.0)
    zero = torch.zeros(nbatch, dtype=torch.float32, device=dev)
    for _ in range(polish_rounds):
        alpha = _fit_alpha(xc, ut, vt)
        flips = half(xc.mT, vt, ut, n, alpha, zero, True, u_opts)
        flips += half(xc, ut, vt, m, alpha, zero, True, v_opts)
        if int(flips) == 0:  # (one device sync per round)
            break
    return ut.to(torch.int8), vt.to(torch.int8)


def _fit_terms(xc: torch.Tensor, ut: torch.Tensor, vt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """<X, U Vᵀ> and ‖U Vᵀ‖² per problem in float64, from xc (B, m, n), ut (B, l, m), vt (B, l, n) ±1.

    <X, U Vᵀ> = Σ (Uᵀ ∘ Vᵀ Xᵀ) and ‖U Vᵀ‖² = Σ (UᵀU ∘ VᵀV) (exact integers), without forming U Vᵀ; in
    float64 (X as given, upcast), like the CPU solver's fit, a slice of the batch at a time.
    """
    nbatch, l, m = ut.shape
    n = vt.shape[2]
    num = torch.empty(nbatch, dtype=torch.float64, device=ut.device)
    den = torch.empty(nbatch, dtype=torch.float64, device=ut.device)
    for c in _chunks(nbatch, 8 * m * n + 16 * l * (m + n) + 16 * l * m + 24 * l * l):
        x64, u64, v64 = xc[c].to(torch.float64), ut[c].to(torch.float64), vt[c].to(torch.float64)
        num[c] = (u64 * torch.bmm(v64, x64.mT)).sum(dim=(1, 2))
        den[c] = (torch.bmm(u64, u64.mT) * torch.bmm(v64, v64.mT)).sum(dim=(1, 2))
    return num, den


def _fit_alpha(xc: torch.Tensor, ut: torch.Tensor, vt: torch.Tensor) -> torch.Tensor:
    """Least-squares α of X ≈ α U Vᵀ per problem, float32 (0 for an all-zero problem)."""
    num, den = _fit_terms(xc, ut, vt)
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0).to(torch.float32)


def sign_fit_error_torch(x: ArrayLike, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Squared error of the best α·U Vᵀ + mean fit per problem (:func:`bqq.solver.sign_fit_error`).

    Args:
        x: (B, m, n) residuals; u: (B, m, l), v: (B, n, l) in ±1 (as returned by
            :func:`solve_sign_factors_torch`), on one device.

    Returns:
        (B,) float64 on u's device.
    """
    nbatch, m = u.shape[:2]
    n = v.shape[1]
    err = torch.empty(nbatch, dtype=torch.float64, device=u.device)
    for c in _chunks(nbatch, 16 * m * n):
        x64 = torch.as_tensor(x[c], dtype=torch.float64, device=u.device)
        xc = x64 - x64.mean(dim=(1, 2), keepdim=True)
        num, den = _fit_terms(xc, u[c].mT, v[c].mT)
        err[c] = (xc * xc).sum(dim=(1, 2)) - torch.where(den > 0, num * num / torch.where(den > 0, den, 1.0), 0.0)
    return err


def solve_stack_torch(
    residuals: ArrayLike,
    rank: int,
    seeds: Sequence[Sequence[int]],
    *,
    restarts: int = 1,
    sweeps: int,
    t_start: float,
    t_end: float,
    alpha_scale: float,
    polish_rounds: int,
    aspect_exponent: float = 0.7,
    device: str | torch.device | None = None,
    tf32: bool = False,
    launch: dict[str, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One new stack for a batch of same-shape groups: the device counterpart of ``BQQMatrix._solve_batch``.

    Args:
        residuals: (G, m, n) current residuals of the groups (float64).
        rank: inner dimension l.
        seeds: G · restarts sequences, group-major (group 0's restarts first), e.g.
            ``(seed, stack, group, restart)`` as :class:`bqq.methods.bqq.BQQMatrix` uses.
        restarts: independent anneals per group; the one with the smallest sign-fit error is kept.
        Other arguments: as for :func:`solve_sign_factors_torch`.

    Returns:
        Y (G, m, l) and Z (G, l, n) uint8 in {0, 1} on the device, contiguous.
    """
    dev = resolve_device(device, residuals)
    groups = residuals.shape[0]
    if len(seeds) != groups * restarts:
        raise ValueError(f"{len(seeds)} seeds for {groups} groups x {restarts} restarts")
    xr = residuals
    if restarts > 1:  # (numpy residuals are repeated on the host: no float64 batch on the device)
        xr = (residuals.repeat_interleave(restarts, dim=0) if isinstance(residuals, torch.Tensor)
              else np.repeat(residuals, restarts, axis=0))
    u, v = solve_sign_factors_torch(xr, rank, seeds, sweeps=sweeps, t_start=t_start, t_end=t_end,
                                    alpha_scale=alpha_scale, polish_rounds=polish_rounds,
                                    aspect_exponent=aspect_exponent, device=dev, tf32=tf32, launch=launch)
    if restarts > 1:
        best = sign_fit_error_torch(xr, u, v).reshape(groups, restarts).argmin(dim=1)
        pick = torch.arange(groups, device=dev) * restarts + best
        u, v = u[pick], v[pick]
    return (u > 0).to(torch.uint8).contiguous(), (v.mT > 0).to(torch.uint8).contiguous()


def refit_scalars_torch(w: ArrayLike, ys: ArrayLike, zs: ArrayLike, *, device: str | torch.device | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact least squares of all scalars of many same-shape groups (:func:`bqq.solver.refit_scalars`).

    Minimizes ‖w - Σ_i (r_i Y_i Z_i + s_i Y_i 1 + t_i 1 Z_i) - u‖² per group, in float64 on the device.
    The (3p+1)² normal matrix is built from l×l products (Y_iᵀY_j ∘ Z_i Z_jᵀ summed) without forming
    any Y_i Z_i, and is exact (integer entries); it is solved by the pseudo-inverse with numpy
    ``lstsq``'s cutoff (singular values below max(3p+1)·eps·σ_max count as 0), so degenerate designs
    get the minimum-norm solution as on the CPU.

    Args:
        w: (B, m, n) targets.
        ys: (B, p, m, l) {0, 1}; zs: (B, p, l, n) {0, 1} (any numeric or bool dtype).
        device: None: w's device if a tensor, else the current CUDA device (any torch device works:
            this uses no Triton kernel).

    Returns:
        scales (B, p, 3) float64 rows (r, s, t), and offsets (B,) float64, on the device.
    """
    if device is None:
        device = w.device if isinstance(w, torch.Tensor) else "cuda"
    dev = torch.device(device)
    ys_t, zs_t = torch.as_tensor(ys, device=dev), torch.as_tensor(zs, device=dev)
    nbatch, p, m, l = ys_t.shape
    n = zs_t.shape[3]
    if tuple(w.shape) != (nbatch, m, n) or tuple(zs_t.shape) != (nbatch, p, l, n):
        raise ValueError(f"shapes do not match: w {tuple(w.shape)}, ys {tuple(ys_t.shape)}, zs {tuple(zs_t.shape)}")
    scales = torch.empty(nbatch, p, 3, dtype=torch.float64, device=dev)
    offset = torch.empty(nbatch, dtype=torch.float64, device=dev)
    for c in _chunks(nbatch, 8 * m * n + 8 * p * l * (m + n) + 8 * l * (m + n) + 16 * l * n + 24 * l * l):
        w64 = torch.as_tensor(w[c], dtype=torch.float64, device=dev)
        scales[c], offset[c] = _refit(w64, ys_t[c], zs_t[c])
    return scales, offset


def _refit(w: torch.Tensor, ys: torch.Tensor, zs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`refit_scalars_torch` on one slice of the batch: w (B, m, n) float64, ys/zs on its device."""
    nbatch, p, m = ys.shape[:3]
    n = zs.shape[3]
    f64 = torch.float64
    gram = torch.empty(nbatch, 3 * p + 1, 3 * p + 1, dtype=f64, device=w.device)
    full, row, col = slice(0, 3 * p, 3), slice(1, 3 * p, 3), slice(2, 3 * p, 3)  # features 3i, 3i+1, 3i+2

    def put(rows: slice | int, cols: slice | int, block: torch.Tensor) -> None:  # a block and its mirror
        gram[:, rows, cols] = block
        gram[:, cols, rows] = block.mT if block.dim() == 3 else block

    a = ys.sum(dim=3, dtype=f64)  # (B, p, m): Y_i 1, the row term (Y_i 1) 1ᵀ
    b = zs.sum(dim=2, dtype=f64)  # (B, p, n): 1ᵀ Z_i, the column term 1 (1ᵀ Z_i)
    y_cols = ys.sum(dim=2, dtype=f64)  # (B, p, l): 1ᵀ Y_i
    z_rows = zs.sum(dim=3, dtype=f64)  # (B, p, l): Z_i 1
    rhs = torch.empty(nbatch, 3 * p + 1, dtype=f64, device=w.device)
    row_sums = torch.empty(nbatch, p, m, dtype=f64, device=w.device)  # Y_i Z_i 1
    col_sums = torch.empty(nbatch, p, n, dtype=f64, device=w.device)  # 1ᵀ Y_i Z_i
    for i in range(p):
        yi, zi = ys[:, i].to(f64), zs[:, i].to(f64)
        rhs[:, 3 * i] = (torch.bmm(yi.mT, w) * zi).sum(dim=(1, 2))  # <Y_i Z_i, W> = Σ (Y_iᵀ W) ∘ Z_i
        row_sums[:, i] = torch.bmm(yi, z_rows[:, i, :, None])[:, :, 0]
        col_sums[:, i] = torch.bmm(y_cols[:, i, None, :], zi)[:, 0]
        for j in range(i, p):  # <Y_i Z_i, Y_j Z_j> = Σ (Y_iᵀ Y_j) ∘ (Z_i Z_jᵀ): l×l products, exact integers
            yj, zj = ys[:, j].to(f64), zs[:, j].to(f64)
            inner = (torch.bmm(yi.mT, yj) * torch.bmm(zi, zj.mT)).sum(dim=(1, 2))
            gram[:, 3 * i, 3 * j] = gram[:, 3 * j, 3 * i] = inner
    put(full, row, torch.bmm(row_sums, a.mT))  # [i, j] = <Y_i Z_i, (Y_j 1) 1ᵀ>
    put(full, col, torch.bmm(col_sums, b.mT))  # <Y_i Z_i, 1 (1ᵀ Z_j)>
    put(full, -1, (y_cols * z_rows).sum(dim=2))  # <Y_i Z_i, 1 1ᵀ>
    put(row, row, n * torch.bmm(a, a.mT))
    put(row, col, a.sum(dim=2)[:, :, None] * b.sum(dim=2)[:, None, :])
    put(row, -1, n * a.sum(dim=2))
    put(col, col, m * torch.bmm(b, b.mT))
    put(col, -1, m * b.sum(dim=2))
    gram[:, -1, -1] = m * n
    rhs[:, row] = (a * w.sum(dim=2).unsqueeze(1)).sum(dim=2)
    rhs[:, col] = (b * w.sum(dim=1).unsqueeze(1)).sum(dim=2)
    rhs[:, -1] = w.sum(dim=(1, 2))
    # numpy lstsq's default cutoff: singular values <= (3p+1)·eps·σ_max count as zero (minimum-norm solution).
    cutoff = (3 * p + 1) * torch.finfo(f64).eps
    coef = (torch.linalg.pinv(gram, rtol=cutoff, hermitian=True) @ rhs.unsqueeze(2)).squeeze(2)
    return coef[:, :-1].reshape(nbatch, p, 3), coef[:, -1]


def dequantize_groups_torch(ys: torch.Tensor, zs: torch.Tensor, scales: torch.Tensor, offset: torch.Tensor
                            ) -> torch.Tensor:
    """Σ_i (r_i Y_i Z_i + s_i Y_i 1 + t_i 1 Z_i) + u per group, float64 (``BQQMatrix.dequantize_group``).

    Args:
        ys: (B, p, m, l) {0,1}; zs: (B, p, l, n) {0,1}; scales: (B, p, 3) rows (r, s, t); offset: (B,).

    Returns:
        (B, m, n) float64 on ys's device. Y_i Z_i is an exact float32 product (counts <= l < 2²⁴, exact
        with TF32 too: 0/1 inputs, fp32 accumulation).
    """
    nbatch, p, m, l = ys.shape
    n = zs.shape[3]
    sc = scales.to(torch.float64)
    out = offset.to(torch.float64)[:, None, None].expand(nbatch, m, n).clone()
    for c in _chunks(nbatch, 12 * m * n + 4 * l * (m + n)):
        for i in range(p):
            y, z = ys[c, i].to(torch.float32), zs[c, i].to(torch.float32)
            out[c] += sc[c, i, 0, None, None] * torch.bmm(y, z)  # (float32 counts, promoted)
            out[c] += sc[c, i, 1, None, None] * y.sum(dim=2, dtype=torch.float64)[:, :, None]
            out[c] += sc[c, i, 2, None, None] * z.sum(dim=1, dtype=torch.float64)[:, None, :]
    return out


# --- memory ---------------------------------------------------------------------------------------
def bytes_per_group(shape: tuple[int, int], rank: int, stacks: int = 1, restarts: int = 1) -> int:
    """Estimated device bytes per group of :func:`quantize_groups_torch`, besides ``TRANSIENT_BYTES``.

    Per group: the float64 target and residual, the {0,1} factors of ``stacks`` stacks, and per restart
    the solver's state: float32 X, Uᵀ and Vᵀ, X V, the Gram matrix and the int8 signs (with restarts,
    also the repeated float64 residual). float64 temporaries (σ_max, α fits, refit, dequantization)
    are formed in slices of at most ``TRANSIENT_BYTES``. An estimate: ``benchmarks/solver.py --device
    cuda`` prints it next to the measured peak.
    """
    m, n = shape
    l, r = rank, restarts
    keep = 16 * m * n + stacks * l * (m + n) + (8 * m * n * r if r > 1 else 0)
    state = 4 * m * n + 4 * l * (m + n) + 4 * l * max(m, n) + 4 * l * l + 2 * l * (m + n)
    return keep + r * state


def groups_per_batch(shape: tuple[int, int], rank: int, budget_bytes: int, *, stacks: int = 1,
                     restarts: int = 1) -> int:
    """How many groups of ``shape`` fit in ``budget_bytes`` of device memory at once (at least 1).

    ``TRANSIENT_BYTES`` of the budget are kept for the sliced float64 temporaries.
    """
    usable = int(budget_bytes) - TRANSIENT_BYTES
    return max(1, usable // bytes_per_group(shape, rank, stacks, restarts))


def device_budget(device: str | torch.device | None = None, fraction: float = 0.8) -> int:
    """``fraction`` of the currently free memory of a CUDA device, in bytes (for :func:`groups_per_batch`)."""
    free, _ = torch.cuda.mem_get_info(torch.device(device) if device is not None else None)
    return int(free * fraction)


# --- whole groups -----------------------------------------------------------------------------------
@dataclass
class GroupCodes:
    """p stacks of a batch of same-shape groups, on the device (``BQQMatrix``'s fields, unpacked).

    Attributes:
        ys: (G, p, m, l) uint8 {0,1}; zs: (G, p, l, n) uint8 {0,1};
        scales: (G, p, 3) float32 rows (r, s, t); offset: (G,) float32 u.
    """

    ys: torch.Tensor
    zs: torch.Tensor
    scales: torch.Tensor
    offset: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        """(G, m, n) float64 reconstructions from the stored (float32) scalars."""
        return dequantize_groups_torch(self.ys, self.zs, self.scales, self.offset)


def quantize_groups_torch(
    targets: ArrayLike,
    stacks: int,
    *,
    rank: int | None = None,
    seed: int | Sequence[int] = 0,
    group_ids: Sequence[int] | None = None,
    config: BQQConfig | None = None,
    device: str | torch.device | None = None,
    budget_bytes: int | None = None,
    tf32: bool = False,
    launch: dict[str, int] | None = None,
    initial: GroupCodes | None = None,
    progress: Callable[[int], object] | None = None,
) -> GroupCodes:
    """BQQ codes of same-shape groups on the device: ``stacks`` greedy stacks, each followed by the exact refit.

    What ``BQQMatrix._add_stacks`` does for one shape, on the device: stack k is solved on the residual
    of the stored (float32) scalars of stacks < k with seeds ``(seed, k, group_ids[g], restart)``, then
    all 3(k+1) + 1 scalars are refitted and stored as float32. ``initial`` continues existing codes
    (``extend``): stack numbering then starts at its stack count.

    Args:
        targets: (G, m, n) group matrices.
        stacks: p, the number of stacks to add.
        rank: l; None: :func:`bqq.methods.bqq.inner_dim` of the shape with ``config.rank_scale``.
        seed, group_ids: the seeds' first and third entries (group_ids default 0..G-1); ``seed`` may
            be one int per group (groups of different layers solved together by the model pass).
        config: solver settings (:class:`bqq.methods.bqq.BQQConfig`; None: defaults). ``batch_groups``
            is ignored: batches are sized by memory instead.
        budget_bytes: device memory for one batch (None: 80 % of free memory on CUDA, everything at once
            elsewhere); groups are processed in batches of :func:`groups_per_batch`, targets moved to
            the device one batch at a time.
        tf32, launch: as for :func:`solve_sign_factors_torch`.
        initial: codes of the same groups to extend (on any device).
        progress: called with the number of groups of a batch after each of its stacks (e.g. a tqdm
            bar's ``update``).

    Returns:
        :class:`GroupCodes` with all stacks (``initial``'s first), on the device.
    """
    from .methods.bqq import BQQConfig, auto_sweeps, inner_dim

    cfg = config or BQQConfig()
    dev = resolve_device(device, targets)
    groups, m, n = targets.shape
    ids = list(range(groups)) if group_ids is None else list(group_ids)
    if len(ids) != groups:
        raise ValueError(f"{len(ids)} group ids for {groups} groups")
    group_seeds = [int(seed)] * groups if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    if len(group_seeds) != groups:
        raise ValueError(f"{len(group_seeds)} seeds for {groups} groups")
    l = inner_dim((m, n), cfg.rank_scale) if rank is None else int(rank)
    first = 0 if initial is None else initial.ys.shape[1]
    if initial is not None and (initial.ys.shape != (groups, first, m, l) or initial.zs.shape != (groups, first, l, n)):
        raise ValueError(f"initial codes {tuple(initial.ys.shape)}, {tuple(initial.zs.shape)} do not match "
                         f"{groups} groups of {m}x{n} with l = {l}")
    if budget_bytes is None:
        budget_bytes = device_budget(dev) if dev.type == "cuda" else 1 << 62
    size = groups_per_batch((m, n), l, budget_bytes, stacks=first + stacks, restarts=cfg.restarts)
    solver_kw = {"sweeps": cfg.sweeps or auto_sweeps((m, n), l), "t_start": cfg.t_start, "t_end": cfg.t_end,
                 "alpha_scale": cfg.alpha_scale, "polish_rounds": cfg.polish_rounds,
                 "aspect_exponent": cfg.aspect_exponent}
    parts = []
    for lo in range(0, groups, size):
        part = slice(lo, min(lo + size, groups))
        target = torch.as_tensor(targets[part], dtype=torch.float64, device=dev)
        batch_ids, batch_seeds = ids[part], group_seeds[part]
        count = len(batch_ids)
        if initial is None:
            ys = torch.zeros(count, 0, m, l, dtype=torch.uint8, device=dev)
            zs = torch.zeros(count, 0, l, n, dtype=torch.uint8, device=dev)
            scales = torch.zeros(count, 0, 3, dtype=torch.float32, device=dev)
            offset = torch.zeros(count, dtype=torch.float32, device=dev)
        else:
            ys, zs = initial.ys[part].to(dev, torch.uint8), initial.zs[part].to(dev, torch.uint8)
            scales, offset = initial.scales[part].to(dev, torch.float32), initial.offset[part].to(dev, torch.float32)
        for k in range(first, first + stacks):
            residual = dequantize_groups_torch(ys, zs, scales, offset).neg_().add_(target)  # in place: one m×n
            seeds = [(s, k, g, r) for s, g in zip(batch_seeds, batch_ids, strict=True) for r in range(cfg.restarts)]
            y, z = solve_stack_torch(residual, l, seeds, restarts=cfg.restarts, device=dev, tf32=tf32,
                                     launch=launch, **solver_kw)
            del residual
            ys = torch.cat([ys, y[:, None]], dim=1)
            zs = torch.cat([zs, z[:, None]], dim=1)
            coef, off = refit_scalars_torch(target, ys, zs, device=dev)
            scales, offset = coef.to(torch.float32), off.to(torch.float32)
            if progress is not None:
                progress(count)
        parts.append(GroupCodes(ys, zs, scales, offset))
        del target
    return GroupCodes(*(torch.cat([getattr(part, f) for part in parts]) for f in ("ys", "zs", "scales", "offset")))
