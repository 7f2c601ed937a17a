"""Triton GPU kernels. Importing this package imports triton; :mod:`kernels.dispatch` does so lazily.

The BQQ matmul (:mod:`kernels.gpu.bqq_matmul`): :func:`bqq_linear_triton` picks the ``decode``,
``factored`` or ``rebuild`` path with :func:`choose_path`, whose switch points are the fields of
:data:`SWITCH_POINTS` (defaults :data:`DECODE_MAX_TOKENS`, :data:`FACTORED_MAX_TOKENS_PER_RANK`:
reasoned, not yet measured on a GPU).

The bit-plane matmul (:mod:`kernels.gpu.plane_matmul`, UQ / GPTQ / BCQ layouts): :func:`plane_linear_triton`,
one kernel that unpacks the planes into weight tiles in registers, on CUDA cores up to
:data:`PLANE_DECODE_MAX_TOKENS` tokens and on tensor cores beyond (:func:`plane_config`; unmeasured tiles).

The BQQ solver's sweeps, named as on the CPU: :func:`bqq_kernels.gpu.row_sweep.row_sweep` and
:func:`coupled_row_sweep` (:mod:`kernels.gpu.coupled_sweep`, the output-aware V phase).
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
from .coupled_sweep import coupled_row_sweep
from .plane_matmul import DECODE_MAX_TOKENS as PLANE_DECODE_MAX_TOKENS
from .plane_matmul import plane_config, plane_linear_triton
from .row_sweep import row_sweep_triton

__all__ = [
    "DECODE_MAX_TOKENS",
    "FACTORED_MAX_TOKENS_PER_RANK",
    "PATHS",
    "PLANE_DECODE_MAX_TOKENS",
    "SWITCH_POINTS",
    "SwitchPoints",
    "bqq_linear_triton",
    "choose_path",
    "coupled_row_sweep",
    "interpreted",
    "path_for",
    "plane_config",
    "plane_linear_triton",
    "rebuild_weight",
    "row_sweep_triton",
]
