"""transformers models quantized by bqq: ``save_pretrained`` support, rebuilding and loading them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ..ptq.modules import quantized_layers
from ..version import __version__
from .registry import is_hf_model, register, require_transformers


def attach(model: nn.Module) -> bool:
    """Give a transformers model quantized by bqq its ``quantization_config`` and quantizer, so that
    ``model.save_pretrained(dir)`` writes a complete bqq checkpoint. Returns False (and does nothing) for
    other models and for a model without quantized layers. Idempotent; cheap (nothing is packed until
    ``save_pretrained``)."""
    if not is_hf_model(model) or next(quantized_layers(model), None) is None:
        return False
    config_cls, quantizer_cls = register()
    if isinstance(getattr(model, "hf_quantizer", None), quantizer_cls):
        return True
    config = config_cls(bqq_version=__version__)
    model.config.quantization_config = config
    model.hf_quantizer = quantizer_cls(config, pre_quantized=True)
    return True


def hf_model_info(model: nn.Module) -> dict[str, Any] | None:
    """What rebuilds the architecture of a transformers model (``{"architecture": class name, "config": its
    config as JSON}``; no quantization_config), or None for other models. :func:`bqq.save_quantized` keeps it."""
    if not is_hf_model(model):
        return None
    config = json.loads(model.config.to_json_string(use_diff=False))
    config.pop("quantization_config", None)
    return {"architecture": type(model).__name__, "config": config}


def build_model(info: dict[str, Any], path: Any = "") -> nn.Module:
    """A randomly initialized model of the architecture and config in ``info`` (from :func:`hf_model_info`),
    in the config's dtype, in eval mode: the skeleton :func:`bqq.load_quantized` fills."""
    tr = require_transformers()
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config_dict = dict(info.get("config") or {})
    model_type = config_dict.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"{path}: model type {model_type!r} is not known to transformers {tr.__version__}")
    config = CONFIG_MAPPING[model_type].from_dict(config_dict)
    cls = _model_class(tr, info.get("architecture"), path)
    model = cls(config)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        model.to(dtype)
    return model.eval()


def from_pretrained(path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Load a local ``save_pretrained`` directory, quantized by bqq or not, with the class its config.json
    names (``architectures``; AutoModelForCausalLM if none), offline. ``kwargs`` go to ``from_pretrained``."""
    tr = require_transformers()
    register()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; not a save_pretrained directory")
    config = tr.AutoConfig.from_pretrained(path, local_files_only=True)
    names = getattr(config, "architectures", None) or []
    cls = _model_class(tr, names[0], path) if names else tr.AutoModelForCausalLM
    kwargs.setdefault("local_files_only", True)
    return cls.from_pretrained(path, **kwargs).eval()


def _model_class(tr: ModuleType, name: Any, path: Any) -> type:
    cls = getattr(tr, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, tr.PreTrainedModel)):
        raise ValueError(f"{path}: architecture {name!r} is not a model class of transformers {tr.__version__}")
    return cls
