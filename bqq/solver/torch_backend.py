"""The torch backend of the BQQ solver: any torch device, the Triton sweeps on CUDA (or in Triton's interpreter).

Same algorithm, settings, starts and schedule as the CPU backend (:mod:`bqq.solver.anneal` drives both):

* the unweighted phases are two batched GEMMs and the row sweep :func:`bqq_kernels.gpu.row_sweep.row_sweep`;
* under H the U phase is the same row sweep with h = X H V and G = Vᵀ H V, and the V phase, whose rows
  couple through H, is :func:`bqq_kernels.gpu.coupled_sweep.coupled_row_sweep` (one program per problem);
* the α fits, σ_max (power iteration, float64) and the exact refit of all 3p + 1 scalars (under H too)
  are batched over the groups in float64 (:func:`refit_scalars_batched`).

The factors are kept entry-major on the device, Uᵀ (B, l, m) and Vᵀ (B, l, n) (the kernels' layout; Vᵀ > 0
is directly the {0,1} Z of the stack). GEMMs run in full fp32 (TF32 only if asked for).

Results: same seeds, device, batch and library versions give bit-identical codes (no atomics). They are
not bit-identical to the CPU backend (other summation orders in the sweeps and GEMMs): the annealing
trajectories part after a while and the error agrees on average, not per bit.

Memory: float32 X (and X H), Uᵀ, Vᵀ, X V and the Gram matrix per problem (plus the caller's float64
targets); float64 temporaries are formed a slice of the batch at a time (``TRANSIENT_BYTES``), see
:func:`bytes_per_group` and :func:`groups_per_batch`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .codes import TRANSIENT_BYTES, GroupCodes, chunks
from .devices import gpu_sweeps, resolve_device
from .settings import POWER_ITERATIONS, StackSettings, inner_dim
from .stacks import Progress, solve_groups

F64 = torch.float64


@dataclass
class Problem:
    """A batch on the device: float32 centered X (B, m, n), X H (X when unweighted), H in float32 for the
    sweeps and in float64 for the fits (None when unweighted)."""

    xc: torch.Tensor
    xh: torch.Tensor
    hm: torch.Tensor | None
    hessian: torch.Tensor | None


class TorchBackend:
    """The solver's operations on torch tensors of one device (see :mod:`bqq.solver.anneal` for their use).

    Args:
        device: a CUDA device, or the CPU under Triton's interpreter (:func:`~bqq.solver.devices.resolve_device`).
        tf32: allow TF32 in the float32 GEMMs (X V and the Gram matrices). Default False: full fp32.
        launch: row-sweep launch options (:func:`bqq_kernels.gpu.row_sweep.launch_options`).
        budget_bytes: device memory for one batch of groups (None: 80 % of free memory on CUDA).
    """

    name = "torch"
    code_dtypes = (torch.uint8, torch.uint8, torch.float32, torch.float32)  # GroupCodes' ys, zs, scales, offset

    def __init__(self, device: str | torch.device | None = None, *, tf32: bool = False,
                 launch: dict[str, int] | None = None, budget_bytes: int | None = None) -> None:
        self.device = resolve_device(device)
        self.tf32, self.launch, self.budget_bytes = tf32, launch, budget_bytes
        self.row_sweep, self.coupled_sweep = gpu_sweeps()

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Full-fp32 GEMMs (unless ``tf32``) on this device; the caller's settings are restored after."""
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high" if self.tf32 else "highest")
        # (Triton launches on the current CUDA device: make it the tensors' one.)
        on_device = torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()
        try:
            with on_device:
                yield
        finally:
            torch.set_float32_matmul_precision(before)

    # --- sizes and conversions -------------------------------------------------------------------
    def batches(self, count: int, shape: tuple[int, int], rank: int, stacks: int, restarts: int,
                weighted: bool = False) -> tuple[int, int]:
        """(groups handed to the stack loop at once, groups per solve): as many as fit in memory, both."""
        budget = self.budget_bytes
        if budget is None:
            budget = device_budget(self.device) if self.device.type == "cuda" else 1 << 62
        size = groups_per_batch(shape, rank, budget, stacks=stacks, restarts=restarts, weighted=weighted)
        return size, size

    def asarray(self, a: np.ndarray | torch.Tensor, dtype: torch.dtype = F64) -> torch.Tensor:
        return torch.as_tensor(a, dtype=dtype, device=self.device)

    def repeat(self, x: torch.Tensor, count: int) -> torch.Tensor:
        return x if count == 1 else x.repeat_interleave(count, dim=0)

    def broadcast(self, h: torch.Tensor, count: int) -> torch.Tensor:
        return h.expand(count, *h.shape)  # (a view: no copy per problem)

    def take(self, a: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        return a[torch.as_tensor(idx, device=a.device)]

    def cat(self, arrays: list[torch.Tensor], axis: int = 0) -> torch.Tensor:
        return torch.cat(arrays, dim=axis)

    def empty_codes(self, count: int, shape: tuple[int, int], rank: int) -> tuple[torch.Tensor, ...]:
        m, n = shape
        dev = self.device
        return (torch.zeros(count, 0, m, rank, dtype=torch.uint8, device=dev),
                torch.zeros(count, 0, rank, n, dtype=torch.uint8, device=dev),
                torch.zeros(count, 0, 3, dtype=torch.float32, device=dev), torch.zeros(count, dtype=torch.float32,
                                                                                       device=dev))

    # --- one stack ------------------------------------------------------------------------------
    def center(self, x: np.ndarray | torch.Tensor, hessian: torch.Tensor | None) -> torch.Tensor:
        """x (float64 on the device) minus its best constant under the objective."""
        x = self.asarray(x)
        if hessian is None:
            return x - x.mean(dim=(1, 2), keepdim=True)
        h1 = hessian.sum(dim=2)  # (B, n): H 1
        shift = (x.sum(dim=1) * h1).sum(dim=1) / (x.shape[1] * h1.sum(dim=1))
        return x - shift[:, None, None]

    def problem(self, x: np.ndarray | torch.Tensor, hessian: torch.Tensor | None) -> Problem:
        nbatch, m, n = x.shape
        xc = torch.empty(nbatch, m, n, dtype=torch.float32, device=self.device)
        h = None if hessian is None else self.asarray(hessian)
        for c in chunks(nbatch, 24 * m * n):  # centered in float64, stored as float32
            xc[c] = self.center(x[c], None if h is None else h[c])
        hm = None if h is None else _float32(h)
        xh = xc if hm is None else torch.matmul(xc, hm)
        return Problem(xc, xh, hm, h)

    def scale_stats(self, prob: Problem) -> tuple[np.ndarray, np.ndarray]:
        """rms(X) and σ_max(X H) per problem, float64 (B,) on the host (as the CPU: of the float32 X)."""
        nbatch, m, n = prob.xc.shape
        rms = torch.empty(nbatch, dtype=F64, device=self.device)
        sigma = torch.empty(nbatch, dtype=F64, device=self.device)
        for c in chunks(nbatch, 16 * m * n):
            xd = prob.xc[c].to(F64)
            rms[c] = torch.sqrt((xd * xd).mean(dim=(1, 2)))
            sigma[c] = spectral_norm_torch(prob.xh[c].to(F64), POWER_ITERATIONS)
        return rms.cpu().numpy(), sigma.cpu().numpy()

    def factors(self, u: np.ndarray, v: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The starts as entry-major Uᵀ (B, l, m), Vᵀ (B, l, n) on the device."""
        return (torch.from_numpy(u).to(self.device).mT.contiguous(),
                torch.from_numpy(v).to(self.device).mT.contiguous())

    def factors_of(self, u: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The entry-major state (B, l, rows) for ±1 factors (B, rows, l) given by a caller."""
        return torch.as_tensor(u, device=self.device).mT

    def anneal(self, prob: Problem, ut: torch.Tensor, vt: torch.Tensor, alpha: np.ndarray, inv_u: np.ndarray,
               inv_v: np.ndarray) -> None:
        """Soft sweeps, one per row of the (k, B) inverse temperatures (moved to the device at once)."""
        a, iu, iv = (self.asarray(t, torch.float32) for t in (alpha, inv_u, inv_v))
        for i in range(iu.shape[0]):
            self._sweep(prob, ut, vt, a, iu[i], iv[i], hard=False)

    def sweep(self, prob: Problem, ut: torch.Tensor, vt: torch.Tensor, alpha: np.ndarray, inv_temp_u: np.ndarray,
              inv_temp_v: np.ndarray, hard: bool) -> int:
        """A U phase then a V phase; returns the sign changes (one device sync)."""
        a, iu, iv = (self.asarray(t, torch.float32) for t in (alpha, inv_temp_u, inv_temp_v))
        flips = self._sweep(prob, ut, vt, a, iu, iv, hard)
        return int(flips) if hard else 0

    def _sweep(self, prob: Problem, ut: torch.Tensor, vt: torch.Tensor, a: torch.Tensor, iu: torch.Tensor,
               iv: torch.Tensor, hard: bool) -> torch.Tensor | None:
        m, n = prob.xc.shape[1:]
        rank = ut.shape[1]
        u_opts = self.launch or self.row_sweep.launch_options(m, rank)
        v_opts = self.launch or self.row_sweep.launch_options(n, rank)
        if prob.hm is None:
            # own ← sweep given other: h = (X V)ᵀ = Vᵀ Xᵀ (or Uᵀ X), G = VᵀV with diagonal = V's row count.
            f_u = self.row_sweep.row_sweep(torch.bmm(vt, prob.xc.mT), ut, _gram(vt), a, iu, hard, count=hard,
                                           **u_opts)
            f_v = self.row_sweep.row_sweep(torch.bmm(ut, prob.xc), vt, _gram(ut), a, iv, hard, count=hard, **v_opts)
        else:
            # U phase: rows separate, h = X H V, G = Vᵀ H V (its diagonal cancels in the field).
            g = torch.bmm(torch.matmul(vt, prob.hm), vt.mT)
            f_u = self.row_sweep.row_sweep(torch.bmm(vt, prob.xh.mT), ut, g, a, iu, hard, count=hard, **u_opts)
            # V phase: rows coupled through H; P = H Xᵀ U and Q = V K with K = UᵀU, entry-major.
            k = _gram(ut)
            f_v = self.coupled_sweep.coupled_row_sweep(torch.bmm(ut, prob.xh), torch.bmm(k, vt), vt, k, prob.hm,
                                                       a, iv, hard, count=hard)
        return f_u + f_v if hard else None

    def signs(self, a: torch.Tensor) -> torch.Tensor:
        return torch.where(a >= 0, 1.0, -1.0).to(torch.float32)

    def copy(self, a: torch.Tensor) -> torch.Tensor:
        return a.clone()

    def changed(self, before: torch.Tensor, after: torch.Tensor) -> np.ndarray:
        return (before != after).reshape(len(before), -1).sum(dim=1).cpu().numpy()

    def put(self, a: torch.Tensor, idx: np.ndarray, values: torch.Tensor) -> None:
        a[torch.as_tensor(idx, device=a.device)] = values

    def fit_terms(self, xc: torch.Tensor, ut: torch.Tensor, vt: torch.Tensor, hessian: torch.Tensor | None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """<X, UVᵀ>_H and <UVᵀ, UVᵀ>_H per problem (float64, host), without forming U Vᵀ:
        <X, UVᵀ>_H = Σ Uᵀ ∘ (Vᵀ H) Xᵀ and ‖UVᵀ‖²_H = Σ UᵀU ∘ Vᵀ H V (H = I: exact integers)."""
        nbatch, l, m = ut.shape
        n = vt.shape[2]
        num = torch.empty(nbatch, dtype=F64, device=ut.device)
        den = torch.empty(nbatch, dtype=F64, device=ut.device)
        for c in chunks(nbatch, 8 * m * n + 24 * l * (m + n) + 24 * l * l):
            x64, u64, v64 = xc[c].to(F64), ut[c].to(F64), vt[c].to(F64)
            vh = v64 if hessian is None else torch.matmul(v64, hessian[c])
            num[c] = (u64 * torch.bmm(vh, x64.mT)).sum(dim=(1, 2))
            den[c] = (torch.bmm(u64, u64.mT) * torch.bmm(vh, v64.mT)).sum(dim=(1, 2))
        return num.cpu().numpy(), den.cpu().numpy()

    def weighted_square(self, xc: torch.Tensor, hessian: torch.Tensor | None) -> np.ndarray:
        """<X, X>_H per problem (float64, host)."""
        xw = xc if hessian is None else torch.matmul(xc, hessian)
        return (xc * xw).sum(dim=(1, 2)).cpu().numpy()

    def sign_bits(self, ut: torch.Tensor, vt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Y = (U > 0) (G, m, l) and Z = (Vᵀ > 0) (G, l, n), uint8, contiguous."""
        return (ut.mT > 0).to(torch.uint8).contiguous(), (vt > 0).to(torch.uint8).contiguous()

    def int8(self, ut: torch.Tensor) -> torch.Tensor:
        """Entry-major signs as int8 (B, rows, l) (a view of the (B, l, rows) array)."""
        return ut.to(torch.int8).mT

    # --- the refit -----------------------------------------------------------------------------
    def refit(self, targets: torch.Tensor, ys: torch.Tensor, zs: torch.Tensor, hessian: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`refit_scalars_batched`, stored as float32: scales (G, p, 3) and offsets (G,)."""
        scales, offset = refit_scalars_batched(targets, ys, zs, hessian)
        return scales.to(torch.float32), offset.to(torch.float32)


def _float32(h: torch.Tensor) -> torch.Tensor:
    """h as float32, keeping a broadcast view (one H shared by the batch) a view."""
    if h.dim() == 3 and h.shape[0] > 1 and h.stride(0) == 0:
        return h[0].to(torch.float32).expand_as(h)
    return h.to(torch.float32)


def _gram(vt: torch.Tensor) -> torch.Tensor:
    """Vᵀ V (B, l, l) from entry-major vt (B, l, rows), its diagonal set to the row count (the mean-field
    expectation of each ±1 entry squared; for exact signs it changes nothing)."""
    g = torch.bmm(vt, vt.mT)
    g.diagonal(dim1=1, dim2=2).fill_(vt.shape[2])
    return g


def spectral_norm_torch(x: torch.Tensor, iters: int = POWER_ITERATIONS) -> torch.Tensor:
    """Largest singular value of each x[b], (B, m, n) float64 -> (B,), by power iteration on xᵀx.

    The numba :func:`bqq_kernels.cpu.spectral_norm`, batched: the same fixed start 1 + 0.5 sin(1 + k) and
    iteration count; a zero matrix gives 0.
    """
    nbatch, _, n = x.shape
    k = torch.arange(n, dtype=F64, device=x.device)
    vec = (1.0 + 0.5 * torch.sin(1.0 + k)).expand(nbatch, n).unsqueeze(2)
    sigma = torch.zeros(nbatch, dtype=F64, device=x.device)
    for _ in range(iters):
        norm = torch.linalg.vector_norm(vec, dim=(1, 2), keepdim=True)
        vec = vec / torch.where(norm > 0, norm, 1.0)
        tmp = torch.bmm(x, vec)
        sigma = torch.linalg.vector_norm(tmp, dim=(1, 2))
        vec = torch.bmm(x.mT, tmp)
    return sigma


# --- the exact refit, batched -------------------------------------------------------------------------
def refit_scalars_batched(w: np.ndarray | torch.Tensor, ys: np.ndarray | torch.Tensor, zs: np.ndarray | torch.Tensor,
                          hessian: np.ndarray | torch.Tensor | None = None, *,
                          device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact least squares of all scalars of many same-shape groups (:func:`bqq.solver.refit_scalars`).

    Minimizes ‖E‖² (or tr(E H Eᵀ) with ``hessian``), E = w - Σ_i (r_i Y_i Z_i + s_i Y_i 1 + t_i 1 Z_i) - u
    per group, in float64 on the device. The (3p+1)² normal matrix is built from l×l products
    (Y_iᵀY_j ∘ Z_i H Z_jᵀ summed) without forming any Y_i Z_i; it is solved by the pseudo-inverse with
    numpy ``lstsq``'s cutoff (singular values below (3p+1)·eps·σ_max count as 0), so degenerate designs
    get the minimum-norm solution as on the CPU.

    Args:
        w: (B, m, n) targets.
        ys: (B, p, m, l) {0, 1}; zs: (B, p, l, n) {0, 1} (any numeric or bool dtype).
        hessian: None, or H (n, n) shared by the groups or (B, n, n), symmetric positive semi-definite.
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
    h = None if hessian is None else torch.as_tensor(hessian, dtype=F64, device=dev)
    if h is not None and h.dim() == 2:
        h = h.expand(nbatch, n, n)
    scales = torch.empty(nbatch, p, 3, dtype=F64, device=dev)
    offset = torch.empty(nbatch, dtype=F64, device=dev)
    for c in chunks(nbatch, 16 * m * n + 8 * p * l * (m + n) + 16 * l * (m + n) + 16 * l * n + 24 * l * l):
        w64 = torch.as_tensor(w[c], dtype=F64, device=dev)
        scales[c], offset[c] = _refit(w64, ys_t[c], zs_t[c], None if h is None else h[c])
    return scales, offset


def _refit(w: torch.Tensor, ys: torch.Tensor, zs: torch.Tensor, h: torch.Tensor | None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`refit_scalars_batched` on one slice of the batch: w (B, m, n) float64, h None or (B, n, n).

    Features: the products Y_i Z_i, the row terms a_i 1ᵀ (a_i = Y_i 1), the column terms 1 b_iᵀ
    (b_i = Zᵀ_i 1) and the constant 1 1ᵀ; <F, G>_H = tr(F H Gᵀ), and for outer products
    <a bᵀ, c dᵀ>_H = (a·c)(bᵀ H d).
    """
    nbatch, p, m = ys.shape[:3]
    n = zs.shape[3]

    def weigh(a: torch.Tensor) -> torch.Tensor:  # rows a (B, k, n) -> a H (H symmetric: (H aᵀ)ᵀ)
        return a if h is None else torch.bmm(a, h)

    gram = torch.empty(nbatch, 3 * p + 1, 3 * p + 1, dtype=F64, device=w.device)
    rhs = torch.empty(nbatch, 3 * p + 1, dtype=F64, device=w.device)
    full, row, col = slice(0, 3 * p, 3), slice(1, 3 * p, 3), slice(2, 3 * p, 3)  # features 3i, 3i+1, 3i+2

    def put(rows: slice | int, cols: slice | int, block: torch.Tensor) -> None:  # a block and its mirror
        gram[:, rows, cols] = block
        gram[:, cols, rows] = block.mT if block.dim() == 3 else block

    a = ys.sum(dim=3, dtype=F64)  # (B, p, m): Y_i 1
    b = zs.sum(dim=2, dtype=F64)  # (B, p, n): 1ᵀ Z_i
    y_cols = ys.sum(dim=2, dtype=F64)  # (B, p, l): 1ᵀ Y_i
    h1 = weigh(torch.ones(nbatch, 1, n, dtype=F64, device=w.device))[:, 0]  # (B, n): H 1
    hb = weigh(b)  # (B, p, n): H b_i
    ones_h_ones = h1.sum(dim=1)  # 1ᵀ H 1 (n when unweighted)
    wh = weigh(w)  # W H
    zh1 = torch.empty(nbatch, p, zs.shape[2], dtype=F64, device=w.device)  # Z_i H 1
    full_row = torch.empty(nbatch, p, p, dtype=F64, device=w.device)
    full_col = torch.empty(nbatch, p, p, dtype=F64, device=w.device)
    for i in range(p):
        yi, zi = ys[:, i].to(F64), zs[:, i].to(F64)
        zhi = weigh(zi)  # Z_i H
        zh1[:, i] = zhi.sum(dim=2)
        rhs[:, 3 * i] = (torch.bmm(yi.mT, wh) * zi).sum(dim=(1, 2))  # <W, Y_i Z_i>_H = Σ (Y_iᵀ W H) ∘ Z_i
        full_row[:, i] = (torch.bmm(a, yi) * zh1[:, i, None, :]).sum(dim=2)  # [i, j] = a_jᵀ Y_i Z_i H 1
        full_col[:, i] = (torch.bmm(hb, zi.mT) * y_cols[:, i, None, :]).sum(dim=2)  # 1ᵀ Y_i Z_i H b_j
        for j in range(i, p):  # <Y_i Z_i, Y_j Z_j>_H = Σ (Y_iᵀ Y_j) ∘ (Z_i H Z_jᵀ): l×l products
            yj, zj = ys[:, j].to(F64), zs[:, j].to(F64)
            inner = (torch.bmm(yi.mT, yj) * torch.bmm(zhi, zj.mT)).sum(dim=(1, 2))
            gram[:, 3 * i, 3 * j] = gram[:, 3 * j, 3 * i] = inner
    a_sum = a.sum(dim=2)
    b_h1 = (b * h1[:, None, :]).sum(dim=2)  # 1ᵀ H b_j
    put(full, row, full_row)
    put(full, col, full_col)
    put(full, -1, (y_cols * zh1).sum(dim=2))  # 1ᵀ Y_i Z_i H 1
    put(row, row, ones_h_ones[:, None, None] * torch.bmm(a, a.mT))
    put(row, col, a_sum[:, :, None] * b_h1[:, None, :])
    put(row, -1, ones_h_ones[:, None] * a_sum)
    put(col, col, m * torch.bmm(b, hb.mT))
    put(col, -1, m * b_h1)
    gram[:, -1, -1] = m * ones_h_ones
    rhs[:, row] = (a * wh.sum(dim=2).unsqueeze(1)).sum(dim=2)  # a_iᵀ W H 1
    rhs[:, col] = (hb * w.sum(dim=1).unsqueeze(1)).sum(dim=2)  # 1ᵀ W H b_i
    rhs[:, -1] = wh.sum(dim=(1, 2))
    # numpy lstsq's default cutoff: singular values <= (3p+1)·eps·σ_max count as zero (minimum-norm solution).
    cutoff = (3 * p + 1) * torch.finfo(F64).eps
    coef = (torch.linalg.pinv(gram, rtol=cutoff, hermitian=True) @ rhs.unsqueeze(2)).squeeze(2)
    return coef[:, :-1].reshape(nbatch, p, 3), coef[:, -1]


def quantize_groups_torch(targets: np.ndarray | torch.Tensor, stacks: int, *, config: Any, rank: int | None = None,
                          seed: int | Sequence[int] = 0, group_ids: Sequence[int] | None = None,
                          device: str | torch.device | None = None, hessian: np.ndarray | None = None,
                          initial: GroupCodes | None = None, progress: Progress = None, tf32: bool = False,
                          launch: dict[str, int] | None = None, budget_bytes: int | None = None) -> GroupCodes:
    """BQQ codes of same-shape groups on a torch device (:func:`bqq.solver.stacks.solve_groups`).

    Args:
        targets: (G, m, n) group matrices.
        stacks: p, the number of stacks to add.
        config: solver settings (a :class:`bqq.methods.bqq.BQQConfig`; ``batch_groups`` is ignored:
            batches are sized by memory instead).
        rank: l; None: :func:`~bqq.solver.settings.inner_dim` of the shape with ``config.rank_scale``.
        seed, group_ids: the seeds' first and third entries (group_ids default 0..G-1); ``seed`` may
            be one int per group (groups of different layers solved together by the model pass).
        device: where to solve; None: targets' device if a tensor, else the current CUDA device.
        hessian: None or the groups' shared (n, n) H (output-aware).
        initial: codes of the same groups to extend (on any device).
        progress: called with a group count after each solved batch.
        tf32, launch, budget_bytes: as for :class:`TorchBackend`.

    Returns:
        :class:`GroupCodes` with all stacks (``initial``'s first), on the device.
    """
    backend = TorchBackend(device if device is not None or not isinstance(targets, torch.Tensor) else targets.device,
                           tf32=tf32, launch=launch, budget_bytes=budget_bytes)
    groups, m, n = targets.shape
    l = inner_dim((m, n), config.rank_scale) if rank is None else int(rank)
    seeds = [int(seed)] * groups if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    ids = list(range(groups)) if group_ids is None else [int(g) for g in group_ids]
    settings = StackSettings.of(config, (m, n), l, hessian is not None)
    return solve_groups(backend, targets, stacks, rank=l, settings=settings, seeds=seeds, group_ids=ids,
                        hessian=hessian, initial=initial, progress=progress)


# --- memory ---------------------------------------------------------------------------------------
def bytes_per_group(shape: tuple[int, int], rank: int, stacks: int = 1, restarts: int = 1,
                    weighted: bool = False) -> int:
    """Estimated device bytes per group of a torch-backend solve, besides ``TRANSIENT_BYTES``.

    Per group: the float64 target and residual, the {0,1} factors of ``stacks`` stacks, and per restart
    the solver's state: float32 X, Uᵀ and Vᵀ, X V, the Gram matrix and the int8 signs (with restarts,
    also the repeated float64 residual); ``weighted``: also X H, P = H Xᵀ U and Q = V K. float64
    temporaries are formed in slices of at most ``TRANSIENT_BYTES``. An estimate: ``benchmarks/solver.py
    --device cuda`` prints it next to the measured peak.
    """
    m, n = shape
    l, r = rank, restarts
    keep = 16 * m * n + stacks * l * (m + n) + (8 * m * n * r if r > 1 else 0)
    state = 4 * m * n + 4 * l * (m + n) + 4 * l * max(m, n) + 4 * l * l + 2 * l * (m + n)
    if weighted:
        state += 4 * m * n + 8 * l * n
    return keep + r * state


def groups_per_batch(shape: tuple[int, int], rank: int, budget_bytes: int, *, stacks: int = 1,
                     restarts: int = 1, weighted: bool = False) -> int:
    """How many groups of ``shape`` fit in ``budget_bytes`` of device memory at once (at least 1).

    ``TRANSIENT_BYTES`` of the budget are kept for the sliced float64 temporaries.
    """
    usable = int(budget_bytes) - TRANSIENT_BYTES
    return max(1, usable // bytes_per_group(shape, rank, stacks, restarts, weighted))


def device_budget(device: str | torch.device | None = None, fraction: float = 0.8) -> int:
    """``fraction`` of the currently free memory of a CUDA device, in bytes (for :func:`groups_per_batch`)."""
    free, _ = torch.cuda.mem_get_info(torch.device(device) if device is not None else None)
    return int(free * fraction)
