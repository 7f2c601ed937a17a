"""Environment workarounds, used only by scripts and tests that need timm (bqq itself never imports timm).

A CPU build of torch beside PyPI's torchvision (a CUDA build) fails at ``import timm`` with
``RuntimeError: operator torchvision::nms does not exist``: torchvision's compiled ops do not load,
and its Python side then registers fake kernels for operators that were never declared.
:func:`import_timm` declares those two operator schemas when (and only when) that happens, so timm and
``torchvision.transforms`` work; torchvision's C++ ops (nms, roi_align, image io) stay unavailable,
which a ViT PTQ toolkit does not need. With a matched torch/torchvision pair nothing is changed.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

_library = None  # keeps the torch.library registration alive


def import_timm() -> ModuleType:
    """``import timm``, declaring torchvision's missing nms/qnms schemas first if needed."""
    try:
        return importlib.import_module("timm")
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
    _declare_torchvision_ops()
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith(("torchvision.", "timm"))]:
        del sys.modules[name]  # drop the half-imported modules and retry
    return importlib.import_module("timm")


def _declare_torchvision_ops() -> None:
    global _library
    import torch

    if _library is None:
        _library = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            _library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
