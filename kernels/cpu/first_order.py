"""Numba kernels for the first-order quantizers on many same-size groups at once.

* :func:`clip_search`: UQ's clip-range grid search (paper Alg. S.1) for every group of a stack.
* :func:`encode_uniform`: nearest-level codes of every group for its own (lo, step).
* :func:`bcq_fit`: BCQ's greedy start and alternating least squares for every group.
* :func:`gptq_block_parallel` (and ``_serial``): GPTQ's exact column-by-column rounding inside one block of columns.

Groups come stacked as the rows of a (G, k) float64 array. Every kernel runs the groups in parallel
(``prange``), each group by one thread in a fixed order, so results do not depend on the thread count.
Each kernel has a multithreaded and a serial build; small stacks take the serial one, as a parallel
region costs tens of microseconds and can stall on busy cores (see ``binary_factorization``).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from .builds import parallel_and_serial

# Below this much work (candidate·element evaluations, or element·round updates) the serial build runs.
PARALLEL_MIN_WORK = 400_000

# The crossover of the two searches: prefix sums for groups of at least PREFIX_K_FACTOR · 4^b
# values. Fitted to crossovers timed on rows of EfficientNet-Lite0 and Gaussian rows (k = 9..4096,
# b = 1..8, AVX2, N = 100), which grow about as 4^b and pass the largest k swept above 4 bits; no
# committed benchmark repeats that sweep (benchmarks/first_order.py times whole models). The paper's count,
# O(2^b log k) against O(k) per candidate, would put it far lower: the direct search runs four candidates
# per SIMD instruction and prunes more the more levels there are, the prefix-sum form is scalar.
PREFIX_K_FACTOR = 7.5


def prefer_prefix_sums(levels: int, k: int) -> bool:
    """Whether the prefix-sum search is the faster one for groups of ``k`` values at ``levels`` = 2^b."""
    return k >= PREFIX_K_FACTOR * levels * levels


# --- clip-range search -----------------------------------------------------------------------------

# Values added between two pruning checks of the direct search.
_PRUNE_EVERY = 8
# The prefix-sum search finds each level's cuts by one pointer walk per lo up to this many values per hi
# candidate, by binary searches beyond (where the searches overtook the walk, timed at N = 100, b = 1..8;
# in no committed table).
_WALK_MAX_K_PER_CANDIDATE = 150


@nb.njit(cache=True, nogil=True)
def _accumulate(xl: float, inv: np.ndarray, step: np.ndarray, err: np.ndarray, top: float) -> None:
    """err[j] += (xl − code·step[j])², code = min(ceil(xl·inv[j] − 1/2), top), for one value xl > 0.

    A function of its own over sliced arrays: indices from 0 let LLVM put the loop on SIMD lanes (an
    offset start index would need negative-index checks, which keep it scalar); hi is innermost, so every
    lane has its own accumulator and the sum needs no reassociation.
    """
    for j in range(err.size):
        r = np.ceil(xl * inv[j] - 0.5)  # >= 0 since xl > 0
        if r > top:
            r = top
        d = xl - r * step[j]
        err[j] += d * d


@nb.njit(cache=True, nogil=True)
def _search_direct(xs: np.ndarray, los: np.ndarray, his: np.ndarray, levels: int) -> tuple[int, int]:
    """Argmin (i, j) of the squared error over the (los[i], his[j]) grid for the sorted values ``xs``, each
    candidate evaluated value by value: code = clip(ceil((x − lo)/step − 1/2), 0, 2^b − 1) (ties go down).

    Exact pruning (error sums only grow): a row whose values at or below lo already cost at least the best
    error so far is skipped, and within a row the values are added from the largest down, so that
    candidates with too small a hi reach the best error early and are dropped (only a leading run of
    them, to keep the loop contiguous). A dropped candidate's full error is >= the best one found before
    it, so the first minimum in (i, j) order is unchanged.
    """
    n = los.size
    k = xs.size
    top = float(levels - 1)
    step = np.empty(n)
    inv = np.empty(n)
    err = np.empty(n)
    best = np.inf
    bi = 0
    bj = 0
    for i in range(n):
        lo = los[i]
        # Values at or below lo take level 0 whatever hi is: their error is one sum for the whole row.
        base = 0.0
        t0 = 0
        while t0 < k and xs[t0] <= lo:
            d = xs[t0] - lo
            base += d * d
            t0 += 1
        if base >= best:
            continue
        for j in range(n):
            s = (his[j] - lo) / top
            step[j] = s
            # A zero step (lo = hi) puts every value on level 0, as the stored rebuild does.
            inv[j] = 1.0 / s if s > 0.0 else 0.0
            err[j] = 0.0
        j0 = 0
        t = k - 1
        while t >= t0:
            stop = max(t0, t - _PRUNE_EVERY + 1)
            while t >= stop:
                _accumulate(xs[t] - lo, inv[j0:], step[j0:], err[j0:], top)
                t -= 1
            while j0 < n and base + err[j0] >= best:
                j0 += 1
            if j0 == n:
                break
        for j in range(j0, n):
            e = base + err[j]
            if e < best:
                best = e
                bi = i
                bj = j
    return bi, bj


@nb.njit(cache=True, nogil=True)
def _upper_bound(xs: np.ndarray, value: float, begin: int, end: int) -> int:
    """First index in [begin, end) whose value exceeds ``value`` (``end`` if none); xs sorted."""
    while begin < end:
        mid = (begin + end) // 2
        if xs[mid] <= value:
            begin = mid + 1
        else:
            end = mid
    return begin


@nb.njit(cache=True, nogil=True)
def _search_prefix(xs: np.ndarray, los: np.ndarray, his: np.ndarray, mu: float, levels: int) -> tuple[int, int]:
    """Argmin (i, j) as :func:`_search_direct`, each candidate evaluated from prefix sums over the sorted
    values ``xs``: level l takes the sorted values in (bound_{l−1}, bound_l], bound_l = lo + (l + 1/2)·step, and
    contributes S2 − 2 c S1 + count·c² with c its value − mu (centred sums cancel far less).

    For one lo the bounds of a level grow with hi, so each level's cuts for all hi are found by one pointer
    walking the sorted values, O(N + k) per level and lo, rather than by N binary searches, O(N·log k):
    the walk for groups up to ``_WALK_MAX_K_PER_CANDIDATE``·N values, the searches beyond.
    """
    n = los.size
    k = xs.size
    top = levels - 1
    p1 = np.empty(k + 1)
    p2 = np.empty(k + 1)
    p1[0] = 0.0
    p2[0] = 0.0
    a1 = 0.0
    a2 = 0.0
    for t in range(k):
        c = xs[t] - mu
        a1 += c
        a2 += c * c
        p1[t + 1] = a1
        p2[t + 1] = a2
    # A walk costs about k steps per level and lo, binary searches N·log2(k): large groups search.
    walk = k <= _WALK_MAX_K_PER_CANDIDATE * n
    step = np.empty(n)
    err = np.empty(n)
    prev = np.empty(n, dtype=np.int64)  # per hi: where the current level starts in the sorted values
    cut = np.empty(n, dtype=np.int64)   # per hi: where it ends
    best = np.inf
    bi = 0
    bj = 0
    for i in range(n):
        lo = los[i]
        for j in range(n):
            step[j] = (his[j] - lo) / top
            err[j] = 0.0
            prev[j] = 0
        for level in range(levels):
            if level == top:
                cut[:] = k
            elif walk:
                p = prev[0]
                for j in range(n):
                    bound = lo + (level + 0.5) * step[j]
                    while p < k and xs[p] <= bound:
                        p += 1
                    # linspace may round a candidate a hair above the next: step back then.
                    while p > 0 and xs[p - 1] > bound:
                        p -= 1
                    cut[j] = p
            else:
                for j in range(n):
                    # The level starts at prev[j] <= its end, since the bounds grow with the level.
                    cut[j] = _upper_bound(xs, lo + (level + 0.5) * step[j], prev[j], k)
            for j in range(n):
                a = prev[j]
                z = cut[j]
                if z > a:  # an empty level adds exactly zero
                    c = lo + level * step[j] - mu
                    err[j] += (p2[z] - p2[a]) - 2 * c * (p1[z] - p1[a]) + (z - a) * c * c
            prev, cut = cut, prev
        for j in range(n):
            if err[j] < best:
                best = err[j]
                bi = i
                bj = j
    return bi, bj


def _clip_search(xs, los, his, mu, levels, prefix):
    groups = xs.shape[0]
    best = np.empty((groups, 2), dtype=np.int64)
    for g in nb.prange(groups):
        if prefix:
            i, j = _search_prefix(xs[g], los[g], his[g], mu[g], levels)
        else:
            i, j = _search_direct(xs[g], los[g], his[g], levels)
        best[g, 0] = i
        best[g, 1] = j
    return best


_clip_search_parallel, _clip_search_serial = parallel_and_serial(_clip_search)


def clip_search(xs: np.ndarray, los: np.ndarray, his: np.ndarray, mu: np.ndarray, levels: int) -> np.ndarray:
    """Per group, the grid indices (i, j) of the clip range (los[i], his[j]) with the smallest squared error.

    The error of a candidate is Σ (x − (lo + code·step))², step = (hi − lo)/(levels − 1), each value on its
    nearest level (ties go down). The first minimum in (i-major, j-minor) order is returned. The cheaper of
    the two exact evaluations is used (:func:`prefer_prefix_sums`); they agree up to rounding.

    Args:
        xs: (G, k) float64, one group per row, each row sorted ascending.
        los, his: (G, N) float64 candidate ends, ascending.
        mu: (G,) float64, the value the prefix sums are centred on (the group mean).
        levels: 2^b.

    Returns:
        (G, 2) int64 indices (i, j).
    """
    xs = np.ascontiguousarray(xs, dtype=np.float64)
    groups, k = xs.shape
    n = los.shape[1]
    prefix = prefer_prefix_sums(levels, k)
    parallel = groups > 1 and groups * n * n * k >= PARALLEL_MIN_WORK
    kernel = _clip_search_parallel if parallel else _clip_search_serial
    return kernel(xs, np.ascontiguousarray(los, dtype=np.float64), np.ascontiguousarray(his, dtype=np.float64),
                  np.ascontiguousarray(mu, dtype=np.float64), levels, prefix)


# --- uniform codes ---------------------------------------------------------------------------------

def _encode_uniform(x, lo, step, levels):
    groups, k = x.shape
    top = levels - 1
    out = np.zeros((groups, k), dtype=np.uint8)
    for g in nb.prange(groups):
        z = lo[g]
        s = step[g]
        if s == 0.0:
            continue
        for t in range(k):
            v = x[g, t]
            q = min(max((v - z) / s - 0.5, 0.0), float(top))
            c = int(np.ceil(q))
            # Exactly the count of bounds z + (l + 1/2)·s below v, the bounds computed as encode() does.
            while c > 0 and z + (c - 0.5) * s >= v:
                c -= 1
            while c < top and z + (c + 0.5) * s < v:
                c += 1
            out[g, t] = c
    return out


_encode_parallel, _encode_serial = parallel_and_serial(_encode_uniform)


def encode_uniform(x: np.ndarray, lo: np.ndarray, step: np.ndarray, levels: int) -> np.ndarray:
    """Nearest-level codes of each group for levels lo[g] + l·step[g], l < levels; ties go down.

    Equals :func:`bqq.methods.uniform.encode` group by group (the same bounds, counted the same way).

    Args:
        x: (G, k) float64.
        lo, step: (G,) float64; step 0 gives code 0 everywhere.
        levels: 2^b, at most 256.

    Returns:
        (G, k) uint8 codes.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    kernel = _encode_parallel if x.shape[0] > 1 and x.size * 4 >= PARALLEL_MIN_WORK else _encode_serial
    return kernel(x, np.ascontiguousarray(lo, dtype=np.float64), np.ascontiguousarray(step, dtype=np.float64),
                  levels)


# --- GPTQ -----------------------------------------------------------------------------------------

def _gptq_block(work: np.ndarray, chol: np.ndarray, lo: np.ndarray, step: np.ndarray, cols: np.ndarray,
               levels: int, codes: np.ndarray, errors: np.ndarray) -> None:
    """GPTQ inside one block of B columns: each column rounded to its row's grid, its error divided by the
    factor's diagonal and pushed onto the block's later columns, row by row (rows are independent).

    The arithmetic is :func:`bqq.methods.gptq.encode_rows` and numpy's outer-product update, operation
    for operation, so the codes equal the numpy form's, whatever the thread count.

    Args:
        work: (m, B) float64 weights still to round, updated in place (a column slice of the layer).
        chol: (B, B) the block's part of the upper factor U of H⁻¹.
        lo, step: (m, C) float64 each row's grid for every column group.
        cols: (B,) int64 the column group of each column.
        levels: 2^b.
        codes: (m, B) uint8 output; errors: (m, B) float64 output, the scaled errors (w − q) / U_jj.
    """
    m, width = work.shape
    for i in nb.prange(m):
        for j in range(width):
            g = cols[j]
            z = lo[i, g]
            s = step[i, g]
            x = work[i, j]
            c = 0
            if s != 0.0:
                for t in range(levels - 1):
                    if x > z + (t + 0.5) * s:
                        c += 1
            codes[i, j] = c
            e = (x - (z + c * s)) / chol[j, j]
            errors[i, j] = e
            for k in range(j + 1, width):
                work[i, k] -= e * chol[j, k]


gptq_block_parallel, gptq_block_serial = parallel_and_serial(_gptq_block)


# --- BCQ -------------------------------------------------------------------------------------------

@nb.njit(cache=True, nogil=True)
def _greedy(x: np.ndarray, bits: int, alpha: np.ndarray, planes: np.ndarray) -> None:
    """Greedy residual binarization: α_i = mean|R|, B_i = sign(R) (sign(0) = +1), R −= α_i B_i."""
    k = x.size
    r = x.copy()
    for i in range(bits):
        acc = 0.0
        for t in range(k):
            acc += abs(r[t])
        a = acc / k
        alpha[i] = a
        for t in range(k):
            if r[t] >= 0:
                planes[i, t] = 1
                r[t] -= a
            else:
                planes[i, t] = 0
                r[t] += a


@nb.njit(cache=True, nogil=True)
def _jacobi_eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (n,) and eigenvectors (columns of an (n, n) array) of a small symmetric matrix, by
    cyclic Jacobi rotations (accurate and dependency-free for n <= 8). ``a`` is overwritten."""
    n = a.shape[0]
    v = np.eye(n)
    for _ in range(100):
        off = 0.0
        diag = 0.0
        for p in range(n):
            diag += a[p, p] * a[p, p]
            for q in range(p + 1, n):
                off += a[p, q] * a[p, q]
        if off <= 1e-36 * diag or off == 0.0:
            break
        for p in range(n - 1):
            for q in range(p + 1, n):
                apq = a[p, q]
                if apq == 0.0:
                    continue
                theta = (a[q, q] - a[p, p]) / (2.0 * apq)
                t = (1.0 if theta >= 0 else -1.0) / (abs(theta) + math.sqrt(theta * theta + 1.0))
                c = 1.0 / math.sqrt(t * t + 1.0)
                s = t * c
                for r in range(n):
                    arp = a[r, p]
                    arq = a[r, q]
                    a[r, p] = c * arp - s * arq
                    a[r, q] = s * arp + c * arq
                for r in range(n):
                    apr = a[p, r]
                    aqr = a[q, r]
                    a[p, r] = c * apr - s * aqr
                    a[q, r] = s * apr + c * aqr
                for r in range(n):
                    vrp = v[r, p]
                    vrq = v[r, q]
                    v[r, p] = c * vrp - s * vrq
                    v[r, q] = s * vrp + c * vrq
    w = np.empty(n)
    for p in range(n):
        w[p] = a[p, p]
    return w, v


# Eigenvalues of the sign Gram below this fraction of the largest are its null space. The Gram of ±1
# planes is an integer matrix: exact dependencies (repeated or negated planes, more planes than values)
# come out near 1e-16 of the largest eigenvalue, while a genuine one is about 1/(b·k) of it or more, so
# the cut sits safely between them for any group below ~1e9 values.
_NULL_EIGENVALUE = 1e-10


@nb.njit(cache=True, nogil=True)
def _fit_alpha(x: np.ndarray, planes: np.ndarray, alpha: np.ndarray) -> None:
    """Least-squares α for fixed signs: the minimum-norm solution of the normal equations (S Sᵀ) α = S x,
    as ``np.linalg.lstsq`` gives it when planes repeat (singular Gram)."""
    bits, k = planes.shape
    gram = np.empty((bits, bits))
    rhs = np.zeros(bits)
    for i in range(bits):
        acc = 0.0
        for t in range(k):
            acc += x[t] if planes[i, t] else -x[t]
        rhs[i] = acc
        gram[i, i] = k
        for j in range(i + 1, bits):
            differ = 0
            for t in range(k):
                if planes[i, t] != planes[j, t]:
                    differ += 1
            gram[i, j] = k - 2 * differ
            gram[j, i] = k - 2 * differ
    w, v = _jacobi_eigh(gram)
    cut = _NULL_EIGENVALUE * max(w.max(), 0.0)
    alpha[:] = 0.0
    for m in range(bits):
        if w[m] > cut:
            proj = 0.0
            for i in range(bits):
                proj += v[i, m] * rhs[i]
            proj /= w[m]
            for i in range(bits):
                alpha[i] += v[i, m] * proj


@nb.njit(cache=True, nogil=True)
def _assign_signs(x: np.ndarray, alpha: np.ndarray, planes: np.ndarray) -> bool:
    """Optimal signs for fixed α, written into ``planes`` (bits, k); returns whether any sign changed.

    Each value takes the nearest of the 2^b values Σ α_i s_i; a tie goes to the larger value (so a zero
    weight keeps sign +1), and equal values to the smaller combination index (a stable sort)."""
    bits, k = planes.shape
    combos = 1 << bits
    values = np.empty(combos)
    for c in range(combos):
        acc = 0.0
        for i in range(bits):
            acc += alpha[i] if (c >> i) & 1 else -alpha[i]
        values[c] = acc
    order = np.argsort(values, kind="mergesort")
    mids = np.empty(combos - 1)
    for c in range(combos - 1):
        mids[c] = (values[order[c + 1]] + values[order[c]]) / 2
    changed = False
    for t in range(k):
        v = x[t]
        lo = 0
        hi = combos - 1
        while lo < hi:  # number of midpoints <= v
            mid = (lo + hi) // 2
            if mids[mid] <= v:
                lo = mid + 1
            else:
                hi = mid
        best = order[lo]
        for i in range(bits):
            bit = (best >> i) & 1
            if planes[i, t] != bit:
                planes[i, t] = bit
                changed = True
    return changed


def _bcq_fit(x, bits, rounds):
    groups, k = x.shape
    alpha = np.empty((groups, bits))
    planes = np.empty((groups, bits, k), dtype=np.uint8)
    for g in nb.prange(groups):
        xg = x[g]
        ag = alpha[g]
        pg = planes[g]
        _greedy(xg, bits, ag, pg)
        changed = False
        for _ in range(rounds):
            _fit_alpha(xg, pg, ag)
            changed = _assign_signs(xg, ag, pg)
            if not changed:
                break
        if changed:  # the last round moved the signs: refit α so it is optimal for the kept signs
            _fit_alpha(xg, pg, ag)
    return alpha, planes


_bcq_parallel, _bcq_serial = parallel_and_serial(_bcq_fit)


def bcq_fit(x: np.ndarray, bits: int, rounds: int) -> tuple[np.ndarray, np.ndarray]:
    """BCQ of every group: greedy start, then up to ``rounds`` alternating rounds, each group stopping
    when its signs no longer change (the loop of :func:`bqq.methods.bcq.binary_code`).

    Args:
        x: (G, k) float64.
        bits: b, 1..8.
        rounds: maximum refinement rounds (0: greedy only).

    Returns:
        (alpha (G, b) float64, planes (G, b, k) uint8 with 1 = +1).
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    groups, k = x.shape
    parallel = groups > 1 and groups * k * bits * max(rounds, 1) >= PARALLEL_MIN_WORK
    return (_bcq_parallel if parallel else _bcq_serial)(x, bits, rounds)


__all__ = [
    "PREFIX_K_FACTOR", "bcq_fit", "clip_search", "encode_uniform", "gptq_block_parallel", "gptq_block_serial",
    "prefer_prefix_sums",
]
