"""Solving the groups of many layers: in-process, in local processes, or on any Executor; resumable.

Every group of every layer is one job (a whole layer for an output-aware method with calibration
data: H couples its groups; on workers BQQ then spreads the groups of each column block). Jobs are
independent (group g of a layer draws its randomness from (layer seed, g), the layer seed from the
run seed and the layer name), so they can run anywhere and in any order. The assembled layer equals
``bqq.compress(weight, group_size=..., seed=layer seed)`` bit for bit where compress's batch-wide polish
stop agrees with each group's own (always with ``polish_tolerance=0``). With a cache folder
each finished group is written atomically as its own packed file named by a hash of everything that
determines it; a rerun loads those and solves the rest.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import hashlib
import itertools
import json
import multiprocessing
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ..api import method_config, solve
from ..common import as_float_matrix, progress_bar
from ..format import FormatError
from ..grouping import GroupGrid
from ..io import load, save
from ..methods import get_method
from ..quantized import QuantizedMatrix
from ..solver.codes import GroupCodes
from ..solver.stacks import MapSolves, SolveTask, solve_task
from ..threads import apply_budget, policy_enabled, serial_numba_thread, single_threaded_libraries, threads_per_process
from ..version import __version__


@dataclass(frozen=True)
class GroupJob:
    """One group of one layer: the data and every setting that determines its codes."""

    layer: str
    index: int  # the group's row-major index in its layer's grid
    matrix: np.ndarray  # (m_g, n_g) in the weight's own dtype (float16 is upcast to float32)
    dtype: str
    method: str
    bits: float
    seed: int  # the layer's seed (:func:`layer_seed`)
    opts: dict[str, Any] = field(default_factory=dict)  # fields of the method's config
    hessian: np.ndarray | None = None  # prepared H of the matrix's columns (output-aware methods), or None
    group_shape: tuple[int, int] | None = None  # None: the matrix is one group; else the whole layer's grid

    def key(self) -> str:
        """Hash of the group's values and settings: the cache file name."""
        h = hashlib.sha256()
        # The whole config, defaults included: a default that changes must not reuse old groups.
        config = dataclasses.asdict(method_config(self.method, self.bits, self.opts)[1])
        settings = [__version__, self.layer, self.index, self.dtype, self.method, self.bits, self.seed,
                    sorted(config.items()), self.matrix.shape, self.matrix.dtype.str, self.group_shape,
                    self.hessian is not None]
        h.update(json.dumps(settings, default=str).encode())
        h.update(np.ascontiguousarray(self.matrix).tobytes())
        if self.hessian is not None:
            h.update(np.ascontiguousarray(self.hessian).tobytes())
        return h.hexdigest()


def layer_seed(seed: int, layer: str) -> int:
    """A 63-bit seed for one layer, independent of scheduling and of the other layers."""
    digest = hashlib.sha256(f"{seed}/{layer}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def solve_group(job: GroupJob, device: torch.device | None = None, map_solves: MapSolves | None = None
                ) -> QuantizedMatrix:
    """Compress one group as group ``job.index`` of its layer (runs in workers; module-level so every
    executor can pickle it). Returns a single-group matrix for :meth:`QuantizedMatrix.from_groups`, or
    the whole layer for a job with ``group_shape``. ``device``: the torch backend's device for a method
    that solves on devices (None: the CPU solver). ``map_solves``: who solves the groups of a layer job
    whose method ``spreads_groups`` (None: this process)."""
    cls, config = method_config(job.method, job.bits, job.opts)
    array, _ = as_float_matrix(job.matrix)
    grid = GroupGrid.build(array.shape, job.group_shape or array.shape)
    q = solve(cls, array, grid, job.bits, job.seed, config, progress=False, first_group=job.index,
              hessian=job.hessian, device=device, map_solves=map_solves)
    q.dtype = job.dtype
    return q


def run_jobs(jobs: list[GroupJob], *, workers: int | cf.Executor | None = None,
             cache_dir: str | os.PathLike | None = None, progress: bool | None = None,
             max_in_flight: int | None = None, device: torch.device | None = None) -> list[QuantizedMatrix]:
    """Solve every job (cached ones are loaded) and return the results in job order.

    Args:
        workers: None: in this process, data-free groups side by side, one per thread on as many threads
            as numba may use, each single-threaded (:func:`_run_threaded`), calibrated ones (each with its
            n×n H) one at a time; 1: in this process, one group at a time with numba using all cores per
            group; an int n > 1: n local processes, each with cores/n threads for numba, torch and BLAS
            (:mod:`bqq.threads`); or any
            ``concurrent.futures.Executor`` (e.g. ``distributed.Client(...).get_executor()`` to spread groups
            over a Dask cluster). With processes or an executor, a calibrated BQQ layer with several row
            blocks is not one job: its column blocks are solved in order in this process and the groups of
            each block spread over the workers (:func:`_run_on_workers`), with the same codes.
        cache_dir: folder for finished groups; an interrupted run (Ctrl-C, kill -9) resumes from it.
        max_in_flight: jobs submitted ahead to an executor (default 2 per local worker, 64 otherwise),
            bounding the memory held by queued group data; also the most tasks (per group shape) that one
            column block of a spread calibrated layer is cut into.
        device: a GPU (from :func:`bqq.solver.devices.solver_device`) for the jobs whose method solves on
            devices (BQQ): those are solved in this process, data-free groups of one shape and settings
            together whatever layer they come from, calibrated layers one by one under their H; the rest
            run as above.
    """
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    results: list[QuantizedMatrix | None] = [None] * len(jobs)
    todo = []
    for i, job in enumerate(jobs):
        cached = _load_cached(cache, job) if cache is not None else None
        if cached is not None:
            results[i] = cached
        else:
            todo.append(i)
    with progress_bar(total=len(jobs), initial=len(jobs) - len(todo), progress=progress, unit="group",
                      desc="quantize") as bar:

        def finish(i: int, q: QuantizedMatrix) -> None:
            results[i] = q
            if cache is not None:
                save(q, _cache_path(cache, jobs[i]))
            bar.update(1)

        if device is not None:
            on_device = [i for i in todo if get_method(jobs[i].method).solves_on_devices]
            _solve_on_device(jobs, [i for i in on_device if _batches(jobs[i])], device, finish)
            for i in on_device:  # calibrated (H) jobs: each under its own H, one after another on the device
                if not _batches(jobs[i]):
                    finish(i, solve_group(jobs[i], device))
            done = set(on_device)
            todo = [i for i in todo if i not in done]
        data_free = [i for i in todo if jobs[i].hessian is None]
        if workers is None and len(data_free) > 1 and _group_threads() > 1:
            # Calibrated jobs stay one at a time: each holds an n×n H and its working copies.
            _run_threaded(jobs, data_free, finish, _group_threads())
            todo = [i for i in todo if jobs[i].hessian is not None]
        if workers is None or workers == 1:
            for i in todo:
                finish(i, solve_group(jobs[i]))
        elif isinstance(workers, cf.Executor):
            _run_on_workers(workers, jobs, todo, finish, max_in_flight or 64)
        elif isinstance(workers, int) and not isinstance(workers, bool) and workers > 1:
            threads = threads_per_process(workers)
            pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                          initializer=_init_worker, initargs=(threads,))
            try:
                _run_on_workers(pool, jobs, todo, finish, max_in_flight or 2 * workers)
            except BaseException:  # Ctrl-C or a failed group: leave at once, finished groups are cached
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown(wait=True)  # reap the workers (and account their resource use to this process)
        else:
            raise ValueError(f"workers must be None, an int >= 1 or a concurrent.futures.Executor, got {workers!r}")
    return results  # type: ignore[return-value]


def _batches(job: GroupJob) -> bool:
    """Whether a device job joins the batches of same-shape groups (data-free single groups do)."""
    return job.hessian is None and job.group_shape is None


HOST_BATCH_BYTES = 1 << 31  # float64 group data handed to one device call (the device batches again by its memory)


def _solve_on_device(jobs: list[GroupJob], todo: list[int], device: torch.device,
                     finish: Callable[[int, QuantizedMatrix], None]) -> None:
    """Jobs of one method, shape, bits and settings solved together on ``device``, in host chunks."""
    for (method, shape, bits, config), idx in _same_problems(jobs, todo).items():
        per_chunk = max(1, HOST_BATCH_BYTES // (8 * shape[0] * shape[1]))
        for lo in range(0, len(idx), per_chunk):
            chunk = idx[lo:lo + per_chunk]
            solved = get_method(method).quantize_many(
                [as_float_matrix(jobs[i].matrix)[0] for i in chunk], int(bits), [jobs[i].seed for i in chunk],
                [jobs[i].index for i in chunk], config, device)
            for i, q in zip(chunk, solved, strict=True):
                q.dtype = jobs[i].dtype
                finish(i, q)


def _same_problems(jobs: list[GroupJob], todo: Iterable[int]) -> dict[tuple, list[int]]:
    """``todo`` by (method, group shape, bits, config): the jobs one solver call can take together."""
    same: dict[tuple, list[int]] = {}
    for i in todo:
        job = jobs[i]
        config = method_config(job.method, job.bits, job.opts)[1]
        same.setdefault((job.method, job.matrix.shape, job.bits, config), []).append(i)
    return same


def _spreads(job: GroupJob) -> bool:
    """Whether a job is a calibrated layer whose groups go to the workers (:func:`_run_on_workers`): its
    method ``spreads_groups`` and each of its column blocks has several groups (several row blocks); with
    one group per block the tasks would run one at a time, so such a layer stays one job."""
    return (get_method(job.method).spreads_groups and job.hessian is not None and job.group_shape is not None
            and len(GroupGrid.build(job.matrix.shape, job.group_shape).row_sizes) > 1)


def _run_on_workers(executor: cf.Executor, jobs: list[GroupJob], todo: list[int],
                    finish: Callable[[int, QuantizedMatrix], None], max_in_flight: int) -> None:
    """The jobs on ``executor``: each whole (:func:`_run_on`), except calibrated layers that spread their
    groups (:func:`_spreads`). Those are solved after, one at a time: the column blocks in order here (each
    needs the errors of the blocks before it), each block's groups on the executor in at most
    ``max_in_flight`` tasks per group shape (:func:`_map_solves`)."""
    spread = [i for i in todo if _spreads(jobs[i])]
    _run_on(executor, jobs, [[i] for i in todo if not _spreads(jobs[i])], finish, max_in_flight)
    for i in spread:
        finish(i, solve_group(jobs[i], map_solves=functools.partial(_map_solves, executor, max_in_flight)))


def _map_solves(executor: cf.Executor, max_tasks: int, tasks: list[SolveTask]) -> list[GroupCodes]:
    """Codes of one column block's tasks (:func:`bqq.solver.stacks.grow_grid`): each task cut into at most
    ``max_tasks`` equal parts solved on ``executor``, gathered in order. The cut does not change the codes
    (a group's randomness is its own), so it only spreads the work."""
    parts = [task.split(-(-len(task) // max_tasks)) for task in tasks]
    futures = [[executor.submit(solve_part, part) for part in split] for split in parts]
    try:
        return [GroupCodes.stack([fut.result() for fut in split]) for split in futures]
    except BaseException:  # a failed part or Ctrl-C: drop the parts not yet started
        for fut in itertools.chain.from_iterable(futures):
            fut.cancel()
        raise


def solve_part(task: SolveTask) -> GroupCodes:
    """One part of a column block of a calibrated layer (runs in workers; module-level so every executor can
    pickle it), under the BLAS limit :func:`bqq.api.solve` puts around a whole layer, so the codes equal
    those of the layer solved in one process."""
    with threadpool_limits(limits=1, user_api="blas"):
        return solve_task(task)


def _run_on(executor: cf.Executor, jobs: list[GroupJob], units: Iterable[list[int]],
            finish: Callable[[int, QuantizedMatrix], None], max_in_flight: int) -> None:
    """Each unit (job indices solved in one call, :func:`solve_bundle`) on ``executor``, at most
    ``max_in_flight`` at a time."""
    pending: dict[cf.Future, list[int]] = {}
    queue = iter(units)
    try:
        while True:
            for unit in queue:
                pending[executor.submit(solve_bundle, [jobs[i] for i in unit])] = unit
                if len(pending) >= max_in_flight:
                    break
            if not pending:
                return
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                for i, q in zip(pending.pop(fut), fut.result(), strict=True):
                    finish(i, q)
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise


def _group_threads() -> int:
    """Threads for groups side by side in this process: numba's thread setting (1 with BQQ_THREAD_POLICY=off,
    which keeps the previous one-group-at-a-time behaviour)."""
    import numba

    return numba.get_num_threads() if policy_enabled() else 1


def _run_threaded(jobs: list[GroupJob], todo: list[int], finish: Callable[[int, QuantizedMatrix], None],
                  threads: int) -> None:
    """The jobs on ``threads`` threads of this process, a bundle of groups each (:func:`_bundles`), every
    library single-threaded.

    Why: one group on all cores parallelizes each annealing sweep over rows, thousands of short parallel
    regions per stack, each ending at a barrier. Beside another busy process a region waits for whichever
    of its threads the scheduler parked (measured by ``benchmarks/busy_cpu.py --workload vit_tiny``).
    Whole groups per thread need no barrier until the group is done. The kernels release the GIL;
    results are identical (a group's codes depend only on its job). BLAS and torch are held to one
    thread for the run (their limits are process-wide) and restored after.
    """
    pool = cf.ThreadPoolExecutor(threads, thread_name_prefix="bqq-group", initializer=serial_numba_thread)
    try:
        with single_threaded_libraries():
            _run_on(pool, jobs, _bundles(jobs, todo), finish, 2 * threads)
    except BaseException:  # Ctrl-C or a failed group: leave at once (running groups end on their own)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


# Data-free groups of one shape and settings that a thread solves in one call: each annealing sweep is then
# one kernel call for all of them instead of one per group (docs/llm.md).
THREAD_BUNDLE = 8


def _bundles(jobs: list[GroupJob], todo: list[int]) -> list[list[int]]:
    """``todo`` cut into what one thread solves at once: data-free single groups of a method that solves
    many at once (BQQ), of one shape, bits and settings, up to THREAD_BUNDLE together; any other job alone."""
    batches = {i: _batches(jobs[i]) and get_method(jobs[i].method).solves_on_devices for i in todo}
    together, alone = [i for i in todo if batches[i]], [[i] for i in todo if not batches[i]]
    return [idx[k:k + THREAD_BUNDLE] for idx in _same_problems(jobs, together).values()
            for k in range(0, len(idx), THREAD_BUNDLE)] + alone


def solve_bundle(bundle: list[GroupJob]) -> list[QuantizedMatrix]:
    """The groups of a bundle (:func:`_bundles`), each with the codes :func:`solve_group` gives it alone (a
    group's randomness and its polish's stopping rule are its own)."""
    if len(bundle) == 1:
        return [solve_group(bundle[0])]
    first = bundle[0]
    cls, config = method_config(first.method, first.bits, first.opts)
    solved = cls.quantize_many([as_float_matrix(job.matrix)[0] for job in bundle], int(first.bits),
                               [job.seed for job in bundle], [job.index for job in bundle], config, None)
    for job, q in zip(bundle, solved, strict=True):
        q.dtype = job.dtype
    return solved


def _init_worker(threads: int) -> None:
    """A worker process's share of the cores for numba, torch and BLAS alike (each library would
    otherwise start one thread per core in every worker)."""
    if policy_enabled():
        apply_budget(threads)
    else:  # BQQ_THREAD_POLICY=off: numba only, as before bqq.threads
        import numba

        numba.set_num_threads(threads)


def _cache_path(cache: Path, job: GroupJob) -> Path:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in job.layer)
    return cache / f"{safe}.g{job.index}.{job.key()[:24]}.safetensors"


def _load_cached(cache: Path, job: GroupJob) -> QuantizedMatrix | None:
    path = _cache_path(cache, job)
    if not path.exists():
        return None
    try:
        q = load(path)
    except (FormatError, OSError) as exc:
        warnings.warn(f"ignoring unreadable cache file {path} ({exc}); solving the group again", stacklevel=3)
        return None
    if not isinstance(q, QuantizedMatrix) or q.shape != job.matrix.shape or q.method != job.method \
            or q.seed != job.seed:
        warnings.warn(f"ignoring cache file {path}: it does not match its group", stacklevel=3)
        return None
    return q
