"""bqq.solver.stacks: the greedy stack loop over a grid; who solves its groups does not change the codes."""

import numpy as np

from bqq.grouping import GroupGrid
from bqq.methods.bqq import BQQConfig, inner_dim
from bqq.solver import (
    GroupCodes,
    NumpyBackend,
    StackSettings,
    damped,
    prepare_hessian,
)
from bqq.solver.stacks import grow_grid, solve_task
from tests.helpers import anisotropic_inputs


def solved_in_parts(size: int, calls: list[int]):
    """A ``map_solves`` for :func:`grow_grid` that solves each task here in parts of ``size`` groups and
    records how many tasks each call got."""
    def map_solves(tasks):
        calls.append(len(tasks))
        return [GroupCodes.stack([solve_task(part) for part in task.split(size)]) for task in tasks]
    return map_solves


def test_grow_grid_gives_the_same_codes_whatever_solves_its_groups():
    # 36 x 24 in 8 x 8 groups: 3 column blocks, each with four 8 x 8 groups and one 4 x 8 (two tasks).
    rng = np.random.default_rng(4)
    w = rng.standard_normal((36, 24))
    x = anisotropic_inputs(24, 300, 5)
    h = damped(prepare_hessian(x.T @ x), 0.1)
    grid = GroupGrid.build(w.shape, (8, 8))
    config = BQQConfig(sweeps=40)
    ranks = [inner_dim(shape, config.rank_scale) for shape in grid.group_shapes()]

    def grow(codes, map_solves=None):
        return grow_grid(NumpyBackend(), w, grid, codes, 1, seed=7, first_group=3, ranks=ranks,
                         settings=lambda shape, rank, weighted: StackSettings.of(config, shape, rank, weighted),
                         hessian=h, map_solves=map_solves)

    empty = [GroupCodes(*NumpyBackend().empty_codes(1, shape, rank))
             for shape, rank in zip(grid.group_shapes(), ranks, strict=True)]
    reference = grow(grow(empty))  # the second stack extends codes: the parts split those too
    for size in (1, 2, 3):
        calls = []
        spread = grow(grow(empty, solved_in_parts(size, calls)), solved_in_parts(size, calls))
        assert calls == [2] * 6  # per column block: its 8 x 8 groups, its 4 x 8 group
        for a, b in zip(reference, spread, strict=True):
            assert all(np.array_equal(x, y) for x, y in zip((a.ys, a.zs, a.scales, a.offset),
                                                            (b.ys, b.zs, b.scales, b.offset), strict=True))
