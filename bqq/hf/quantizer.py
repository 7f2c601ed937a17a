"""The classes registered with transformers for quant_method ``"bqq"``. This module imports transformers:
only :func:`bqq.hf.registry.register` imports it, once transformers is there."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..format import FormatError
from ..ptq.report import record_left_fp
from ..ptq.serialize import restore_quantize_config
from ..version import __version__
from .checkpoint import (
    HF_FORMAT,
    HF_FORMAT_VERSION,
    QUANT_METHOD,
    install_layers,
    local_checkpoint_files,
    packed_state,
    place_layers,
)


class BqqConfig(QuantizationConfigMixin):
    """``quantization_config`` of a bqq checkpoint (see :mod:`bqq.hf`). Loading only: the weights are
    quantized by ``bqq.quantize`` (or ``bqq quantize``), never by ``from_pretrained``.

    Raises FormatError for another format or a newer format version than this bqq reads.
    """

    def __init__(self, bqq_version: str | None = None, format: str = HF_FORMAT,
                 format_version: int = HF_FORMAT_VERSION, layers: dict[str, Any] | None = None,
                 left_fp: dict[str, str] | None = None, coverage: dict[str, Any] | None = None,
                 packed_sha256: str | None = None, fp_sha256: dict[str, str] | None = None,
                 quantize_config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.quant_method = QUANT_METHOD
        self.bqq_version = bqq_version
        self.format = format
        self.format_version = format_version
        self.layers = layers
        self.left_fp = left_fp
        self.coverage = coverage
        self.packed_sha256 = packed_sha256
        self.fp_sha256 = fp_sha256
        self.quantize_config = quantize_config  # the bqq.QuantizeConfig that made it (to_dict form), if known
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
                "fp_sha256": self.fp_sha256, "quantize_config": self.quantize_config}


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
        install_layers(model, entries, files)
        return model

    def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        leftover = [n for n, p in model.named_parameters() if p.device.type == "meta"]
        if leftover:
            raise FormatError(f"bqq checkpoint: tensors {leftover[:5]} were not in the checkpoint")
        place_layers(model)
        record_left_fp(model, self.quantization_config.left_fp or {})
        restore_quantize_config(model, self.quantization_config.quantize_config, "bqq checkpoint")
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
