"""Registering quant_method ``"bqq"`` with transformers, lazily.

:func:`register_with_transformers` (called by ``import bqq``) registers right away when transformers'
quantizer registry (``transformers.quantizers.auto``) is already imported, and otherwise installs a finder
that registers the moment transformers imports it (transformers does so before any ``from_pretrained``).
Nothing here imports transformers before then.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import threading
import warnings
from types import ModuleType
from typing import Any

from .checkpoint import QUANT_METHOD

_REGISTRY = "transformers.quantizers.auto"  # the module that holds transformers' quantizer registry
_INSTALL_HINT = "pip install 'bqq[hf]'"

_lock = threading.RLock()
_classes: tuple[type, type] | None = None  # (BqqConfig, BqqHfQuantizer) once registered


def require_transformers() -> ModuleType:
    """``transformers`` (through :func:`bqq.compat.import_transformers`), or an ImportError saying how to get it."""
    from ..compat import import_transformers

    try:
        return import_transformers()
    except ImportError as exc:
        raise ImportError(f"this needs Hugging Face transformers, which is not installed ({exc}); {_INSTALL_HINT}"
                          ) from exc


def is_hf_model(model: Any) -> bool:
    """Whether ``model`` is a transformers ``PreTrainedModel`` (never imports transformers: a model of it can
    only exist once transformers' modeling code is imported)."""
    modeling = sys.modules.get("transformers.modeling_utils")
    return modeling is not None and isinstance(model, modeling.PreTrainedModel)


def register() -> tuple[type, type]:
    """Register quant_method ``"bqq"`` with transformers now (imports its quantizer registry); idempotent.

    Returns ``(BqqConfig, BqqHfQuantizer)``.
    """
    global _classes
    with _lock:
        if _classes is not None:
            return _classes
        if _REGISTRY not in sys.modules:
            require_transformers()
        auto = importlib.import_module(_REGISTRY)
        from .quantizer import BqqConfig as config_cls  # imports transformers
        from .quantizer import BqqHfQuantizer as quantizer_cls

        # A reloaded bqq.hf.quantizer finds its earlier classes registered; the registry has no unregister and its
        # decorators refuse a second registration, so the entries are replaced in place.
        for mapping, cls, decorator in ((auto.AUTO_QUANTIZATION_CONFIG_MAPPING, config_cls,
                                         auto.register_quantization_config),
                                        (auto.AUTO_QUANTIZER_MAPPING, quantizer_cls, auto.register_quantizer)):
            if QUANT_METHOD in mapping:
                mapping[QUANT_METHOD] = cls
            else:
                decorator(QUANT_METHOD)(cls)
        _classes = (config_cls, quantizer_cls)
        return _classes


def register_with_transformers() -> None:
    """Called by ``import bqq``: register now if transformers' quantizer registry is imported, otherwise the
    moment it is. Imports nothing; a failure to register later is a warning, never a failed import."""
    if _REGISTRY in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``transformers.quantizers.auto`` is imported, it wraps the real loader so
    that :func:`register` runs right after the module has executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _REGISTRY:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisteringLoader(spec.loader, self)
        return spec


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, finder: _RegisterOnImport) -> None:
        self._loader, self._finder = loader, finder

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        if self._finder in sys.meta_path:
            sys.meta_path.remove(self._finder)
        try:
            register()
        except Exception as exc:  # a broken registration must not break the user's import of transformers
            warnings.warn(f"bqq could not register its quantizer with transformers ({type(exc).__name__}: {exc}); "
                          "from_pretrained will not load bqq checkpoints", stacklevel=2)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... of the real loader
        return getattr(self._loader, name)
