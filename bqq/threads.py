"""One thread budget per process for numba, torch and BLAS, and idle threads that sleep instead of spin.

Why: a BQQ solve is thousands of short numba parallel regions per stack with single-threaded BLAS
between them. OpenMP's default is to keep idle worker threads spinning for a while after each region,
so a solve burned CPU time beyond its work even on a quiet machine, and beside another busy process
the spinning threads took cores from the threads doing work (both processes' workers wait at every
region's barrier for a thread the scheduler has parked). ``benchmarks/busy_cpu.py`` times both policies,
quiet and beside a competitor (``benchmarks/results/busy_cpu*.md``). OMP_WAIT_POLICY=PASSIVE makes idle
OpenMP threads sleep (:func:`prefer_passive_waiting`, applied when ``bqq_kernels.cpu`` is imported,
before numba starts its threads), and :func:`apply_budget` gives numba, torch and BLAS one consistent
thread count per process, so worker processes (``bqq.ptq.runner``) split the cores instead of each
using all of them.

``BQQ_THREAD_POLICY=off`` in the environment disables both (the behaviour before this module: the
libraries' defaults); results are identical either way, only the timing differs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Defined beside the sweeps, which start numba's threads, and applied when they are imported.
from bqq_kernels.cpu.binary_factorization import (
    POLICY_ENV,
    WAIT_SWITCHES,
    policy_enabled,
    prefer_passive_waiting,
)


def available_cores(affinity: set[int] | None = None, cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota if one is set."""
    cores = len(affinity if affinity is not None else os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else (os.cpu_count() or 1)
    quota = _cgroup_quota(cgroup_root / "cpu.max")
    return max(1, min(cores, quota) if quota else cores)


def _cgroup_quota(path: Path) -> int | None:
    """Whole cores allowed by a cgroup v2 ``cpu.max`` ("quota period" or "max period"), or None."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, int(int(quota) / int(period)))


def threads_per_process(processes: int = 1, cores: int | None = None) -> int:
    """Threads each of ``processes`` processes should use so that together they fill ``cores`` (default:
    :func:`available_cores`) without oversubscribing them; at least 1."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    return max(1, (cores if cores is not None else available_cores()) // processes)


def apply_budget(threads: int) -> dict[str, int]:
    """Use ``threads`` threads for numba's parallel regions, torch's intra-op pool and BLAS in this
    process (numba is capped at the pool it started with). Returns what each library was set to."""
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    numba_threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(numba_threads)
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads, user_api="blas")  # process-wide (not used as a context)
    return {"numba": numba_threads, "torch": threads, "blas": threads}


@contextmanager
def single_threaded_libraries() -> Iterator[None]:
    """Hold torch's intra-op pool and BLAS to one thread (both limits are process-wide), restoring them
    after: for work spread over threads of its own, one task per core (bqq.ptq.runner)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(torch_threads)


def serial_numba_thread() -> None:
    """Run this thread's numba kernels on it alone (numba's thread count is per thread)."""
    import numba

    numba.set_num_threads(1)


__all__ = ["POLICY_ENV", "WAIT_SWITCHES", "apply_budget", "available_cores", "policy_enabled", "prefer_passive_waiting",
           "serial_numba_thread", "single_threaded_libraries", "threads_per_process"]
