"""Environment workarounds, used only by scripts and tests that need timm or transformers (bqq itself
imports neither).

A CPU build of torch beside PyPI's torchvision (a CUDA build) fails at ``import timm`` with
``RuntimeError: operator torchvision::nms does not exist``: torchvision's compiled ops do not load,
and its Python side then registers fake kernels for operators that were never declared.
:func:`import_timm` declares those two operator schemas when (and only when) that happens, so timm and
``torchvision.transforms`` work; torchvision's C++ ops (nms, roi_align, image io) stay unavailable,
which a ViT PTQ toolkit does not need. transformers imports torchvision lazily (its image processors)
and fails the same way when a model class is first touched; :func:`import_transformers` repairs
torchvision up front. With a matched torch/torchvision pair nothing is changed.

transformers also probes for the Hugging Face ``kernels`` package by importing ``kernels``. Run from a
source checkout (the repository root on ``sys.path``), that name finds our own ``kernels/`` folder,
whose second import would register the ``bqq::`` ops twice; :func:`import_transformers` hides that
folder under the name ``kernels`` (it is ``bqq_kernels``).
"""

from __future__ import annotations

import importlib
import os
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


def import_transformers() -> ModuleType:
    """``import transformers``, with torchvision repaired first if it is installed and broken."""
    try:
        importlib.import_module("torchvision")
    except ImportError:
        pass  # no torchvision: transformers does without it
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
        _declare_torchvision_ops()
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    _hide_source_kernels_folder()
    # transformers 5.x turns Hub kernels on by default in from_pretrained and then raises when the `kernels`
    # package is absent (seen with 5.25); they download code at run time anyway, which bqq never wants.
    os.environ.setdefault("USE_HUB_KERNELS", "NO")
    return importlib.import_module("transformers")


def _hide_source_kernels_folder() -> None:
    import importlib.util
    from pathlib import Path

    import bqq_kernels

    if "kernels" in sys.modules:
        return
    spec = importlib.util.find_spec("kernels")
    if spec is not None and spec.origin and Path(spec.origin).resolve() == Path(bqq_kernels.__file__).resolve():
        sys.modules["kernels"] = None  # `import kernels` now fails cleanly and find_spec says "absent"


def _declare_torchvision_ops() -> None:
    global _library
    import torch

    if _library is None:
        _library = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            _library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
