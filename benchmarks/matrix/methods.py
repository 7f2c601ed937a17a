"""The compared methods: registry methods at each budget, BQQ stack chains, and JPEG (benchmark-only).

Every method turns (matrix, budgets) into :class:`Point` records: the MSE against the standardized
matrix, the stored bits (each method's ``total_bits``, every binary, code and FP32 scalar counted;
KB = bits / 8000 as in the paper) and the seconds spent.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

import bqq
from bqq.methods.bqq import inner_dim

# Table S.4: (stacks p, rank_scale) pairs at equal budget p · rank_scale; rank_scale = 1 is plain BQQ.
TRADEOFF = [(2, 0.5), (4, 0.25), (1, 2.0), (4, 0.5), (8, 0.25), (2, 1.5), (6, 0.5), (12, 0.25), (2, 2.0), (8, 0.5),
            (16, 0.25)]


@dataclass
class Point:
    """One compressed matrix: a method at one setting."""

    method: str
    budget: float          # the nominal bits per weight the setting targets
    setting: str           # e.g. "bits=2", "p=4 rank_scale=0.5"
    mse: float
    total_bits: int
    bits_per_weight: float
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kb(self) -> float:
        return self.total_bits / 8000

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "kb": self.kb}


@dataclass(frozen=True)
class Context:
    seed: int
    bqq_sweeps: int | None = None       # None: the solver's default schedule
    kmeans_restarts: int | None = None  # None: the vq method's default


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    family: str  # "first-order" (UQ, BCQ), "low-rank", "vector", "transform", "bqq"
    run: Callable[[np.ndarray, Sequence[int], Context], list[Point]]


def mse(w_hat: np.ndarray, w: np.ndarray) -> float:
    return float(((np.asarray(w_hat, np.float64) - w) ** 2).mean())


def registry(name: str, method: str, **opts: Any) -> Callable[[np.ndarray, Sequence[int], Context], list[Point]]:
    """Registry method ``method`` with ``opts``, compressed once per budget (``bits`` = budget), as ``name``."""

    def run(w: np.ndarray, budgets: Sequence[int], ctx: Context) -> list[Point]:
        settings = dict(opts)
        if method == "vq" and ctx.kmeans_restarts is not None:
            settings["restarts"] = ctx.kmeans_restarts
        points = []
        for b in budgets:
            start = time.perf_counter()
            try:
                q = bqq.compress(w, bits=b, method=method, seed=ctx.seed, **settings)
            except ValueError as exc:  # e.g. a budget below rank 1 / one centroid
                print(f"    {name} bits={b}: no point ({exc})")
                continue
            seconds = time.perf_counter() - start
            points.append(Point(name, b, f"bits={b}", mse(q.dequantize().double().numpy(), w), q.total_bits,
                                q.bits_per_weight, seconds, _details(q)))
        return points

    return run


def _details(q: bqq.QuantizedMatrix) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in ("ranks", "counts"):
        if hasattr(q, attr):
            out["rank" if attr == "ranks" else "centroids"] = getattr(q, attr)[0]
    return out


def bqq_chains(settings: Sequence[tuple[int, float]], w: np.ndarray, ctx: Context, name: str) -> list[Point]:
    """BQQ at (p, rank_scale) settings; one greedy chain per rank_scale (``extend`` adds stacks).

    ``compress(w, bits=p)`` equals ``compress(w, bits=k).extend(p - k)`` bit for bit, so a chain gives
    every p of its rank_scale for the cost of the largest; a point's seconds are the chain's so far.
    """
    opts = {} if ctx.bqq_sweeps is None else {"sweeps": ctx.bqq_sweeps}
    points = []
    for rank_scale in dict.fromkeys(rs for _, rs in settings):
        stacks = sorted(p for p, rs in settings if rs == rank_scale)
        start = time.perf_counter()
        q = bqq.compress(w, bits=stacks[0], rank_scale=rank_scale, seed=ctx.seed, **opts)
        for p in stacks:
            if p > q.stacks:
                q.extend(p - q.stacks)
            seconds = time.perf_counter() - start
            points.append(Point(name, p * rank_scale, f"p={p} rank_scale={rank_scale:g}",
                                mse(q.dequantize().double().numpy(), w), q.total_bits, q.bits_per_weight, seconds,
                                {"p": p, "rank_scale": rank_scale, "l": q.ranks[0]}))
    return points


def run_bqq(w: np.ndarray, budgets: Sequence[int], ctx: Context) -> list[Point]:
    return bqq_chains([(b, 1.0) for b in budgets], w, ctx, "bqq")


def run_tradeoff(w: np.ndarray, budgets: Sequence[int], ctx: Context) -> list[Point]:
    return bqq_chains([(p, rs) for p, rs in TRADEOFF if p * rs in budgets], w, ctx, "bqq-tradeoff")


def run_jpeg(w: np.ndarray, budgets: Sequence[int], ctx: Context) -> list[Point]:
    """8-bit UQ, then the highest JPEG quality whose file fits ``budget · m n / 8`` bytes (paper §3.2, method 8).

    The 8-bit codes are the grey levels of the image; stored bits are 8 · (JPEG bytes + 8), the 8 bytes
    being the UQ's FP32 zero point and step. A budget no quality fits gives no point.
    """
    from PIL import Image

    start = time.perf_counter()
    q8 = bqq.compress(w, bits=8, method="uq", seed=ctx.seed)
    codes = q8.group_codes(0)
    zero, step = float(q8.zero[0]), float(q8.scale[0])
    image = Image.fromarray(codes)
    base = time.perf_counter() - start
    points = []
    for b in budgets:
        start = time.perf_counter()
        target = b * w.size / 8
        data, quality = b"", 0
        for quality in range(100, 0, -1):
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=quality)
            data = buffer.getvalue()
            if len(data) <= target:
                break
        if len(data) > target:
            print(f"    jpeg bits={b}: no point (quality 1 needs {len(data)} bytes > {target:.0f})")
            continue
        decoded = np.asarray(Image.open(io.BytesIO(data)), np.float64)
        total_bits = 8 * (len(data) + 8)
        points.append(Point("jpeg", b, f"bits={b} quality={quality}", mse(zero + decoded * step, w), total_bits,
                            total_bits / w.size, base + time.perf_counter() - start, {"quality": quality}))
    return points


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("svd", "SVD", "low-rank", registry("svd", "svd")),
    Method("svd-q4", "SVD + 4-bit UQ", "low-rank", registry("svd-q4", "svdq", factor_bits=4)),
    Method("svd-q8", "SVD + 8-bit UQ", "low-rank", registry("svd-q8", "svdq", factor_bits=8)),
    Method("uq", "UQ", "first-order", registry("uq", "uq")),
    Method("bcq", "BCQ", "first-order", registry("bcq", "bcq")),
    Method("vq", "VQ", "vector", registry("vq", "vq")),
    Method("vq-q4", "VQ + 4-bit UQ", "vector", registry("vq-q4", "vq", centroid_bits=4)),
    Method("vq-q8", "VQ + 8-bit UQ", "vector", registry("vq-q8", "vq", centroid_bits=8)),
    Method("lvq", "E8 LVQ", "vector", registry("lvq", "lvq")),
    Method("jpeg", "8-bit UQ + JPEG", "transform", run_jpeg),
    Method("bqq", "BQQ", "bqq", run_bqq),
    Method("bqq-tradeoff", "BQQ p × rank_scale", "bqq", run_tradeoff),
]}


def budget_allowance(b: int, shape: tuple[int, int]) -> int:
    """Bits a method may store and still count as a ``b``-bit point: b·m·n, or BQQ-b*'s own total.

    BQQ's p* points carry 3p + 1 FP32 scalars and l(m + n) may round above m n (the paper's "p*-bit
    matches p-bit"); allowing every method that much keeps BQQ from winning on a technicality, and
    UQ (+64), BCQ (+32b) and JPEG (+64) fall inside it.
    """
    m, n = shape
    return max(b * m * n, b * inner_dim(shape, 1.0) * (m + n) + 32 * (3 * b + 1))
