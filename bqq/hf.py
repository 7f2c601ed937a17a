"""Hugging Face ``transformers`` integration: ``save_pretrained`` / ``from_pretrained`` of bqq-quantized models.

    import bqq                                    # registers quant_method "bqq" with transformers (below)
    bqq.quantize(model, bits=2)                   # any transformers PreTrainedModel
    model.save_pretrained("out")                  # config.json + model.safetensors, complete
    model = AutoModelForCausalLM.from_pretrained("out")   # the quantized model, identical logits
    model = bqq.load_quantized("out")             # the same, the class taken from config.json

What a checkpoint holds (format ``bqq.hf`` version :data:`HF_FORMAT_VERSION`):

- ``config.json``: the model's config with a ``quantization_config`` of ``quant_method`` ``"bqq"``: the bqq
  version that wrote it, the format and its version, per quantized layer its model-config entry (kind,
  shape, method, bits, what ``bqq.quantize`` measured; as in :func:`bqq.save_quantized`) with the manifest
  entry of its packed matrix (``"matrix"``: :meth:`~bqq.quantized.QuantizedMatrix.info`), the modules left
  in floating point and why, ``fp_sha256`` (one SHA-256 per floating-point tensor) and ``packed_sha256``, a
  SHA-256 over that manifest and every packed tensor.
- ``model.safetensors`` (sharded as transformers shards): every floating-point tensor of the model under
  its usual name (embeddings, norms, biases, an untied ``lm_head``; a tied one is stored once), and each
  quantized layer's packed arrays, named ``"<layer>.qweight.<field>"`` (the fields of
  ``docs/format.md``: bit-packed codes and fp32 scalars).

``from_pretrained`` builds the model on the meta device, puts a quantized layer in the place of each
listed module from the packed arrays (checked against the manifest and the checksums first: a truncated,
tampered or mismatched checkpoint raises :class:`~bqq.format.FormatError`, a newer format asks to upgrade
bqq), then transformers loads the floating-point tensors. The original FP weights are never needed.

Registration is lazy and costs ``import bqq`` nothing: :func:`register_with_transformers` (called by
``import bqq``) registers right away when transformers' quantizer registry
(``transformers.quantizers.auto``) is already imported, and otherwise installs a finder that registers the
moment transformers imports it (transformers does so before any ``from_pretrained``). ``import bqq``
never imports transformers; the config and quantizer classes subclass transformers' and are built at
registration (``bqq.hf.BqqConfig`` / ``bqq.hf.BqqHfQuantizer`` build them on first access).
"""

from __future__ import annotations

import importlib
import importlib.abc
import json
import os
import re
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from .format import FormatError, content_digest
from .quantized import QuantizedMatrix
from .version import __version__

QUANT_METHOD = "bqq"
HF_FORMAT = "bqq.hf"
HF_FORMAT_VERSION = 1
PACKED_INFIX = ".qweight."  # state-dict keys of packed arrays: "<layer>.qweight.<field>" (no module has such a child)
_REGISTRY = "transformers.quantizers.auto"  # the module that holds transformers' quantizer registry
_INSTALL_HINT = "pip install 'bqq[hf]'"

_lock = threading.RLock()
_classes: tuple[type, type] | None = None  # (BqqConfig, BqqHfQuantizer) once registered


# --- transformers, imported only when needed -------------------------------------------------------

def require_transformers() -> ModuleType:
    """``transformers`` (through :func:`bqq.compat.import_transformers`), or an ImportError saying how to get it."""
    from .compat import import_transformers

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


# --- registration ------------------------------------------------------------------------------------

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
        config_cls, quantizer_cls = _build_classes()
        # A reloaded bqq.hf finds its earlier classes registered; the registry has no unregister and its
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


def __getattr__(name: str) -> type:
    """``bqq.hf.BqqConfig`` / ``bqq.hf.BqqHfQuantizer``: the registered classes (registers first)."""
    if name in ("BqqConfig", "BqqHfQuantizer"):
        return register()[name == "BqqHfQuantizer"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- a quantized model in memory -> save_pretrained ------------------------------------------------

def attach(model: nn.Module) -> bool:
    """Give a transformers model quantized by bqq its ``quantization_config`` and quantizer, so that
    ``model.save_pretrained(dir)`` writes a complete bqq checkpoint. Returns False (and does nothing) for
    other models and for a model without quantized layers. Idempotent; cheap (nothing is packed until
    ``save_pretrained``)."""
    from .ptq.modules import quantized_layers

    if not is_hf_model(model) or next(quantized_layers(model), None) is None:
        return False
    config_cls, quantizer_cls = register()
    if isinstance(getattr(model, "hf_quantizer", None), quantizer_cls):
        return True
    config = config_cls(bqq_version=__version__)
    model.config.quantization_config = config
    model.hf_quantizer = quantizer_cls(config, pre_quantized=True)
    return True


def packed_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors a checkpoint of ``model`` holds (its state dict plus every quantized layer's packed arrays
    as ``"<layer>.qweight.<field>"``) and its ``quantization_config`` entries (``layers``, ``left_fp``,
    ``coverage``, ``packed_sha256``)."""
    from .ptq.serialize import model_config

    objects, config = model_config(model)
    layers = config["layers"]
    packed: dict[str, np.ndarray] = {}
    for key, q in objects.items():
        name = key.removesuffix(".weight")
        layers[name]["matrix"] = q.info()
        for field, array in q.fields().items():
            packed[f"{name}{PACKED_INFIX}{field}"] = np.ascontiguousarray(array)
    state = dict(model.state_dict())
    clash = sorted(set(state) & set(packed))
    if clash:
        raise ValueError(f"the model has tensors named like bqq's packed arrays: {clash[:3]}")
    entries = {"format": HF_FORMAT, "format_version": HF_FORMAT_VERSION, "layers": layers,
               "left_fp": config["left_fp"], "coverage": config["coverage"],
               "fp_sha256": {key: _tensor_sha256(t) for key, t in state.items()}}
    entries["packed_sha256"] = _digest(entries, packed)
    state.update({key: torch.from_numpy(array) for key, array in packed.items()})
    return state, entries


def _tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes as safetensors stores them (any dtype, bfloat16 included)."""
    import hashlib

    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}\0{tuple(t.shape)}\0".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _digest(entries: dict[str, Any], packed: dict[str, np.ndarray]) -> str:
    """SHA-256 over the manifest part of a quantization_config and the packed arrays (bqq.format's digest)."""
    manifest = {k: entries.get(k) for k in ("format", "format_version", "layers", "left_fp", "fp_sha256")}
    return content_digest(json.dumps(manifest, sort_keys=True, separators=(",", ":")), packed)


# --- a checkpoint -> the quantized model -----------------------------------------------------------

def read_checkpoint(files: list[str | os.PathLike], entries: dict[str, Any]) -> dict[str, QuantizedMatrix]:
    """The quantized weight of every layer in ``entries["layers"]`` from the packed arrays in ``files`` (the
    checkpoint's safetensors shards), each validated as ``bqq.load`` validates a file. FormatError on a file
    that does not read, a missing, extra or misshapen array, inconsistent content, packed arrays or manifest
    that disagree with ``packed_sha256``, or a floating-point tensor that disagrees with its ``fp_sha256``
    (those not stored under their saved name, such as a tied copy, are left to transformers)."""
    from safetensors import SafetensorError, safe_open

    from .io import _check_tensors, _parse_info  # bqq.load's own checks of a manifest entry and its arrays

    where = f"bqq checkpoint {Path(files[0]).parent}" if files else "bqq checkpoint"
    fp_sha = entries.get("fp_sha256") or {}
    packed: dict[str, np.ndarray] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:  # "pt": bfloat16 FP tensors read too
                for key in f.keys():
                    if PACKED_INFIX in key:
                        packed[key] = f.get_tensor(key).numpy()
                    elif key in fp_sha and _tensor_sha256(f.get_tensor(key)) != fp_sha[key]:
                        raise FormatError(f"{file}: tensor {key!r} differs from the one saved; the checkpoint was "
                                          "modified or corrupted")
        except (SafetensorError, OSError, ValueError) as exc:
            if isinstance(exc, FormatError):
                raise
            raise FormatError(f"{file}: cannot read the checkpoint ({exc}); it is truncated or corrupted") from exc
    layers = entries.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise FormatError(f"{where}: quantization_config lists no quantized layers")
    if _digest(entries, packed) != entries.get("packed_sha256"):
        raise FormatError(f"{where}: checksum mismatch between config.json's quantization_config and the packed "
                          "weights; the checkpoint was modified, truncated or mixed with another one")
    weights, expected = {}, {}
    plans = {}
    for name, layer in layers.items():
        info = layer.get("matrix") if isinstance(layer, dict) else None
        cls, grid = _parse_info(name, info, where)
        try:
            specs = cls.field_specs(info, grid)
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{where}: layer {name!r}: invalid manifest entry ({exc})") from exc
        for field, spec in specs.items():
            expected[f"{name}{PACKED_INFIX}{field}"] = (name, field, spec)
        plans[name] = (cls, grid, info)
    _check_tensors(packed, expected, where)
    for name, (cls, grid, info) in plans.items():
        fields = {field: packed[key] for key, (owner, field, _) in expected.items() if owner == name}
        try:
            weights[name] = cls.from_fields(info, grid, fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{where}: layer {name!r}: inconsistent content ({exc})") from exc
        if list(weights[name].shape) != layers[name].get("shape"):
            raise FormatError(f"{where}: layer {name!r}: weight of shape {list(weights[name].shape)}, the config "
                              f"says {layers[name].get('shape')}")
    return weights


def local_checkpoint_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files of a local checkpoint directory (its index's shards, or model.safetensors)."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / shard for shard in shards]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")


def _install_layers(model: nn.Module, entries: dict[str, Any], files: list[str | os.PathLike]) -> None:
    """Before transformers loads the FP tensors: put the checkpoint's quantized layers into ``model``."""
    from .ptq.layers import WEIGHT
    from .ptq.serialize import restore_layers

    weights = read_checkpoint(files, entries)
    layers = entries["layers"]
    for name, layer in layers.items():
        if layer.get("kind") == WEIGHT:
            # The module's weight is a meta tensor here, and a parametrization takes its device from it;
            # a zero-stride CPU stand-in of the same shape and dtype holds one element.
            module = model.get_submodule(name)
            current = module.weight
            module.weight = nn.Parameter(torch.zeros((), dtype=current.dtype, device="cpu").expand(current.shape),
                                         requires_grad=False)
    restore_layers(model, layers, weights, f"bqq checkpoint {Path(files[0]).parent}")
    # A quantized weight shared by tied modules (include=["lm_head"] on a tied LM) is one parametrization on
    # all of them, tied already: transformers (5.x) must not try to tie or initialize those as parameters.
    tied = getattr(model, "all_tied_weights_keys", None)
    if isinstance(tied, dict):
        shared = {f"{module}.weight" for name, layer in layers.items() if layer.get("kind") == WEIGHT
                  for module in (name, *layer.get("shared_with", []))}
        model.all_tied_weights_keys = {t: s for t, s in tied.items() if t not in shared and s not in shared}
    # The packed arrays are read here, not by transformers: keep them out of its "unexpected keys" report.
    ignored = set(model._keys_to_ignore_on_load_unexpected or ())
    model._keys_to_ignore_on_load_unexpected = ignored | {re.escape(PACKED_INFIX)}


def _place_layers(model: nn.Module) -> None:
    """After loading: fresh kernel layouts, where transformers put the model's tensors."""
    from .ptq.modules import quantized_layers

    device_map = getattr(model, "hf_device_map", None)
    fallback = next((p.device for p in model.parameters()), torch.device("cpu"))
    for name, layer in quantized_layers(model):
        # transformers' weight init may have written into the dense Ŵ a small parametrized weight keeps
        # (it initializes modules it did not load, e.g. an embedding): drop it, it is rebuilt from the codes.
        layer.invalidate_kernel_layout()
        device = _mapped_device(name, device_map) if isinstance(device_map, dict) else fallback
        if device is not None and device.type != "cpu":
            layer.to(device)


def _mapped_device(name: str, device_map: dict[str, Any]) -> torch.device | None:
    """The device ``device_map`` gives module ``name`` (its longest matching prefix)."""
    best = None
    for key in device_map:
        if (key == "" or name == key or name.startswith(key + ".")) and (best is None or len(key) > len(best)):
            best = key
    if best is None:
        return None
    value = device_map[best]
    if value == "disk":
        raise ValueError(f"bqq: layer {name!r} is mapped to 'disk'; offloading quantized layers is not supported")
    return torch.device("cuda", value) if isinstance(value, int) else torch.device(value)


# --- the classes registered with transformers ------------------------------------------------------

def _build_classes() -> tuple[type, type]:
    from transformers.quantizers.base import HfQuantizer
    from transformers.utils.quantization_config import QuantizationConfigMixin

    class BqqConfig(QuantizationConfigMixin):
        """``quantization_config`` of a bqq checkpoint (see :mod:`bqq.hf`). Loading only: the weights are
        quantized by ``bqq.quantize`` (or ``bqq quantize``), never by ``from_pretrained``.

        Raises FormatError for another format or a newer format version than this bqq reads.
        """

        def __init__(self, bqq_version: str | None = None, format: str = HF_FORMAT,
                     format_version: int = HF_FORMAT_VERSION, layers: dict[str, Any] | None = None,
                     left_fp: dict[str, str] | None = None, coverage: dict[str, Any] | None = None,
                     packed_sha256: str | None = None, fp_sha256: dict[str, str] | None = None,
                     **kwargs: Any) -> None:
            self.quant_method = QUANT_METHOD
            self.bqq_version = bqq_version
            self.format = format
            self.format_version = format_version
            self.layers = layers
            self.left_fp = left_fp
            self.coverage = coverage
            self.packed_sha256 = packed_sha256
            self.fp_sha256 = fp_sha256
            kwargs.pop("quant_method", None)
            if format != HF_FORMAT:
                raise FormatError(f"quantization_config of quant_method 'bqq' has format {format!r}, expected "
                                  f"{HF_FORMAT!r}")
            if not isinstance(format_version, int) or isinstance(format_version, bool) or format_version < 1:
                raise FormatError(f"quantization_config: invalid format_version {format_version!r}")
            if format_version > HF_FORMAT_VERSION:
                raise FormatError(f"this checkpoint was written by bqq {bqq_version} in format {HF_FORMAT} version "
                                  f"{format_version}; this bqq {__version__} reads up to version {HF_FORMAT_VERSION}: "
                                  "upgrade bqq (pip install -U bqq)")

        def entries(self) -> dict[str, Any]:
            return {"format": self.format, "format_version": self.format_version, "layers": self.layers,
                    "left_fp": self.left_fp, "coverage": self.coverage, "packed_sha256": self.packed_sha256,
                    "fp_sha256": self.fp_sha256}

    class BqqHfQuantizer(HfQuantizer):
        """Loads bqq checkpoints in ``from_pretrained`` and writes them in ``save_pretrained`` (see :mod:`bqq.hf`)."""

        requires_calibration = True  # pre-quantized checkpoints only: from_pretrained does not quantize
        requires_parameters_quantization = False  # (transformers 4.x reads this)
        required_packages = ()

        def validate_environment(self, *args: Any, device_map: Any = None, **kwargs: Any) -> None:
            if isinstance(device_map, dict) and "disk" in device_map.values():
                raise ValueError("bqq checkpoints cannot be offloaded to disk (device_map has 'disk')")

        def update_dtype(self, dtype: torch.dtype) -> torch.dtype:
            return dtype  # FP tensors load in the requested dtype; quantized layers compute in their input's

        def _process_model_before_weight_loading(self, model: nn.Module, checkpoint_files: Any = None,
                                                 **kwargs: Any) -> nn.Module:
            entries = self.quantization_config.entries()
            files = list(checkpoint_files or ())
            if not files:  # older transformers do not pass them: the checkpoint is then a local directory
                files = local_checkpoint_files(model.config.name_or_path)
            _install_layers(model, entries, files)
            return model

        def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
            from .ptq.report import record_left_fp

            leftover = [n for n, p in model.named_parameters() if p.device.type == "meta"]
            if leftover:
                raise FormatError(f"bqq checkpoint: tensors {leftover[:5]} were not in the checkpoint")
            _place_layers(model)
            record_left_fp(model, self.quantization_config.left_fp or {})
            return model

        def get_state_dict_and_metadata(self, model: nn.Module, *args: Any, **kwargs: Any
                                        ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
            state, entries = packed_state(model)
            # Called by save_pretrained before it writes config.json: the manifest and checksum land there.
            for key, value in entries.items():
                setattr(self.quantization_config, key, value)
            self.quantization_config.bqq_version = __version__
            return state, {}

        def get_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:  # the hook's name before 4.5x
            return self.get_state_dict_and_metadata(model)[0]

        def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
            return True

        @property
        def is_trainable(self) -> bool:
            return False  # the packed codes are not trainable (biases and norms are: bqq.Calibration)

        @property
        def is_qat_trainable(self) -> bool:
            return False

        @property
        def is_compileable(self) -> bool:
            return True  # the packed matmuls are torch ops with fake kernels (bqq_kernels.ops)

    BqqConfig.__module__ = BqqHfQuantizer.__module__ = __name__
    return BqqConfig, BqqHfQuantizer


# --- loading without a skeleton ----------------------------------------------------------------------

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
