"""The greedy stack loop of BQQ, written once for both backends.

Stacks are added greedily: each new stack is solved on the current residual of every group
(:func:`bqq.solver.anneal.solve_stack`), then all 3p + 1 scalars of the group are refitted exactly by
least squares on the binaries (the backend's ``refit``), and stored as float32; the next residual is
taken against those stored scalars. So p stacks at once equal one stack then p - 1 more, bit for bit.

Stack k of group g (``group_ids[g]``) is seeded by ``(seed_g, k, group_ids[g], restart)``, so codes do not
depend on batching. Under an output-aware H a matrix cut into column groups is solved column block by column
block (:func:`grow_grid`), each block under its Schur complement of H, its error carried onto the later
columns (:func:`bqq.solver.hessian_math.column_blocks`), so the cross-block terms of H count. Within a
column block the groups are independent: :func:`grow_grid` can hand them out as tasks (:class:`SolveTask`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..grouping import GroupGrid
from .anneal import solve_stack
from .backend import Backend
from .codes import GroupCodes
from .hessian_math import column_blocks
from .settings import StackSettings

Progress = Callable[[int], object] | None


def add_stacks(backend: Backend, codes: GroupCodes, targets: Any, count: int, *, rank: int, settings: StackSettings,
               seeds: Sequence[int], group_ids: Sequence[int], solve_size: int, hessian: Any = None,
               progress: Progress = None) -> GroupCodes:
    """``count`` greedy stacks on G same-shape groups already on the backend.

    Args:
        codes: the groups' codes so far (the backend's arrays; p = 0 for new groups).
        targets: (G, m, n) float64 group matrices (the backend's arrays).
        seeds, group_ids: per group, the first and third entries of its seeds.
        solve_size: groups solved together per call of the stack solver.
        hessian: None or the groups' shared (n, n) H (the backend's array).
        progress: called with a group count after each solved batch.

    Returns:
        The codes with ``count`` more stacks.
    """
    groups = targets.shape[0]
    for k in range(codes.stacks, codes.stacks + count):
        residual = targets - codes.dequantize()
        new_y, new_z = [], []
        for lo in range(0, groups, solve_size):
            part = range(lo, min(lo + solve_size, groups))
            problem_seeds = [(seeds[g], k, group_ids[g], r) for g in part for r in range(settings.restarts)]
            y, z = solve_stack(backend, residual[lo:part.stop], rank, problem_seeds, settings, hessian)
            new_y.append(y)
            new_z.append(z)
            if progress is not None:
                progress(len(part))
        del residual
        ys = backend.cat([codes.ys, backend.cat(new_y)[:, None]], axis=1)
        zs = backend.cat([codes.zs, backend.cat(new_z)[:, None]], axis=1)
        codes = GroupCodes(ys, zs, *backend.refit(targets, ys, zs, hessian))
    return codes


def solve_groups(backend: Backend, targets: np.ndarray | Any, count: int, *, rank: int, settings: StackSettings,
                 seeds: Sequence[int], group_ids: Sequence[int], hessian: np.ndarray | None = None,
                 initial: GroupCodes | None = None, progress: Progress = None) -> GroupCodes:
    """BQQ codes of same-shape groups: ``count`` greedy stacks added to ``initial`` (None: new groups).

    Groups go to the backend in parts that fit its memory (all at once on the CPU); within a part all
    stacks are added before the next part starts.

    Args:
        targets: (G, m, n) group matrices (numpy, or the backend's arrays).
        seeds, group_ids: per group (see :func:`add_stacks`).
        hessian: None or the groups' shared (n, n) float64 H.
        initial: codes of the same groups to extend (numpy or the backend's arrays).

    Returns:
        :class:`GroupCodes` with all stacks, in the backend's array type.
    """
    groups, m, n = targets.shape
    if len(seeds) != groups or len(group_ids) != groups:
        raise ValueError(f"{len(seeds)} seeds and {len(group_ids)} group ids for {groups} groups")
    first = 0 if initial is None else initial.stacks
    if initial is not None and (tuple(initial.ys.shape) != (groups, first, m, rank)
                                or tuple(initial.zs.shape) != (groups, first, rank, n)):
        raise ValueError(f"initial codes {tuple(initial.ys.shape)}, {tuple(initial.zs.shape)} do not match "
                         f"{groups} groups of {m}x{n} with l = {rank}")
    part_size, solve_size = backend.batches(groups, (m, n), rank, first + count, settings.restarts,
                                            hessian is not None)
    h = None if hessian is None else backend.asarray(hessian)
    parts = []
    for lo in range(0, groups, part_size):
        part = slice(lo, min(lo + part_size, groups))
        if initial is None:
            codes = GroupCodes(*backend.empty_codes(part.stop - lo, (m, n), rank))
        else:
            codes = GroupCodes(*(backend.asarray(a[part], dtype) for a, dtype in zip(
                (initial.ys, initial.zs, initial.scales, initial.offset), backend.code_dtypes, strict=True)))
        parts.append(add_stacks(backend, codes, backend.asarray(targets[part]), count, rank=rank,
                                settings=settings, seeds=seeds[part], group_ids=group_ids[part],
                                solve_size=solve_size, hessian=h, progress=progress))
    return GroupCodes.stack(parts)


@dataclass(frozen=True)
class SolveTask:
    """One :func:`solve_groups` call of :func:`grow_grid`: same-shape groups of one column block.

    Numpy arrays, plain settings and the backend, so it pickles: a task can be solved in another process
    (:func:`solve_task`). A group's codes depend only on its own target, seeds and H, so the task's groups
    can also be solved in parts (:meth:`split`) with the same codes.

    Attributes:
        backend: where to solve (the CPU backend travels as its batch size).
        targets: (G, m, n) float64 group matrices, the earlier column blocks' errors carried in.
        initial: the groups' codes so far (numpy; p = 0 for new groups).
        count: stacks to add.
        rank: the groups' inner dimension l.
        settings: the groups' stack settings.
        seeds, group_ids: per group (see :func:`add_stacks`).
        hessian: None, or the column block's (n, n) float64 S_k (H itself for a single column block).
    """

    backend: Backend
    targets: np.ndarray
    initial: GroupCodes
    count: int
    rank: int
    settings: StackSettings
    seeds: list[int]
    group_ids: list[int]
    hessian: np.ndarray | None

    def __len__(self) -> int:
        return self.targets.shape[0]

    def split(self, size: int) -> list[SolveTask]:
        """The task as tasks of at most ``size`` groups each, in order (their codes stacked are this task's)."""
        return [replace(self, targets=self.targets[lo:lo + size], initial=self.initial.part(lo, size),
                        seeds=self.seeds[lo:lo + size], group_ids=self.group_ids[lo:lo + size])
                for lo in range(0, len(self), size)]


def solve_task(task: SolveTask, progress: Progress = None) -> GroupCodes:
    """The task's groups with ``task.count`` more stacks: :class:`GroupCodes` (numpy, G groups)."""
    return solve_groups(task.backend, task.targets, task.count, rank=task.rank, settings=task.settings,
                        seeds=task.seeds, group_ids=task.group_ids, hessian=task.hessian, initial=task.initial,
                        progress=progress).numpy()


MapSolves = Callable[[list[SolveTask]], list[GroupCodes]]


def grow_grid(backend: Backend, w: np.ndarray, grid: GroupGrid, codes: list[GroupCodes], count: int, *, seed: int,
              first_group: int, ranks: Sequence[int], settings: Callable[[tuple[int, int], int, bool], StackSettings],
              hessian: np.ndarray | None = None, progress: Progress = None,
              map_solves: MapSolves | None = None) -> list[GroupCodes]:
    """``count`` more stacks for every group of a matrix ``w`` cut by ``grid``.

    Args:
        codes: per group its codes so far (numpy, G = 1 each).
        seed, first_group: group g's seeds are (seed, stack, first_group + g, restart).
        ranks: per group its inner dimension l.
        settings: the stack settings of a (shape, rank, weighted) group.
        hessian: None (‖E‖²), or the (damped) (n, n) H of tr(E H Eᵀ): then column block by column block.
        map_solves: None: solve here. Else called once per column block (once in all without ``hessian``)
            with that block's tasks, one per group shape, and returns their codes in order, solved anywhere
            (e.g. in parts on other processes); the column blocks and their carried errors stay here.
        progress: called with a group count after each solved batch (after each column block with
            ``map_solves``).

    Returns:
        The new codes per group (numpy, G = 1 each).
    """
    blocks = list(grid.blocks())
    target = np.array(w, np.float64)
    if hessian is None:
        stages = [(range(len(blocks)), None, None)]
    else:
        stages = [([g for g, blk in enumerate(blocks) if blk[1] == b], weight, carry)
                  for b, (_, weight, carry) in enumerate(column_blocks(hessian, grid.col_sizes))]
    codes, shapes = list(codes), grid.group_shapes()
    for members, weight, carry in stages:
        by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
        for g in members:
            by_shape[shapes[g]].append(g)
        tasks = [SolveTask(backend, np.stack([target[blocks[g][2], blocks[g][3]] for g in idx]),
                           GroupCodes.stack([codes[g] for g in idx]), count, ranks[idx[0]],
                           settings(shape, ranks[idx[0]], weight is not None), [seed] * len(idx),
                           [first_group + g for g in idx], weight)
                 for shape, idx in by_shape.items()]
        if map_solves is None:
            solved = [solve_task(task, progress) for task in tasks]
        else:
            solved = map_solves(tasks)
            if progress is not None:
                progress(count * len(members))
        for idx, new in zip(by_shape.values(), solved, strict=True):
            for j, g in enumerate(idx):
                codes[g] = new.group(j)
        if carry is not None:
            _carry_error(target, blocks, members, codes, carry)
    return codes


def _carry_error(target: np.ndarray, blocks: list[tuple[int, int, slice, slice]], members: Sequence[int],
                 codes: list[GroupCodes], carry: np.ndarray) -> None:
    """target[:, later columns] += E_k F_k: the solved column block's error carried onward (in place)."""
    cs = blocks[members[0]][3]
    error = np.empty((target.shape[0], cs.stop - cs.start))
    for g in members:
        rs = blocks[g][2]
        error[rs] = target[rs, cs] - codes[g].dequantize()[0]
    target[:, cs.stop:] += error @ carry
