"""Triton GPU kernels. Importing this package imports triton; :mod:`kernels.dispatch` does so lazily.

The BQQ matmul (:mod:`kernels.gpu.bqq_matmul`): :func:`bqq_linear_triton` picks the ``decode``,
``factored`` or ``rebuild`` path with :func:`choose_path`, whose switch points are the fields of
:data:`SWITCH_POINTS` (defaults :data:`DECODE_MAX_TOKENS`, :data:`FACTORED_MAX_TOKENS_PER_RANK`:
reasoned, not yet measured on a GPU).
"""

from .bqq_matmul import (
    DECODE_MAX_TOKENS,
    FACTORED_MAX_TOKENS_PER_RANK,
    PATHS,
    SWITCH_POINTS,
    SwitchPoints,
    bqq_linear_triton,
    choose_path,
    interpreted,
    path_for,
    rebuild_weight,
)
from .row_sweep import row_sweep_triton

__all__ = [
    "DECODE_MAX_TOKENS",
    "FACTORED_MAX_TOKENS_PER_RANK",
    "PATHS",
    "SWITCH_POINTS",
    "SwitchPoints",
    "bqq_linear_triton",
    "choose_path",
    "interpreted",
    "path_for",
    "rebuild_weight",
    "row_sweep_triton",
]
