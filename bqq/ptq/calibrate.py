"""Calibrated PTQ settings, and c-BQQ: tuning biases and norms against the floating-point model.

With calibration data, :func:`bqq.quantize` first solves every layer under the output-aware objective
tr((W - Ŵ) H (W - Ŵ)ᵀ), H = Σ x xᵀ over the layer's calibration inputs (:mod:`bqq.ptq.hessian`). Then,
optionally (``epochs`` > 0), the paper's c-BQQ: the binaries and scalars stay fixed and the biases and
the normalization layers' weights and biases are trained so that the quantized model's outputs match
the floating-point model's (MSE loss, Adam). Paper settings for c-BQQ: lr 1e-3, 15 epochs, mini-batch
16, 2048 (DeiT) or 1024 (Swin) calibration images.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..common import progress_bar
from .hessian import run_model
from .modules import cached_weights, trainable_scalars

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", nn.LayerNorm), nn.LocalResponseNorm,
              nn.modules.batchnorm._NormBase)


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer: one of torch's (LayerNorm, RMSNorm, GroupNorm, every
    BatchNorm/InstanceNorm), or any module whose class is named like one (timm's, transformers'
    ``LlamaRMSNorm``, ``T5LayerNorm``, ...) and holds only vectors."""
    if isinstance(module, NORM_TYPES):
        return True
    params = list(module.parameters(recurse=False))
    return "norm" in type(module).__name__.lower() and bool(params) and all(p.dim() <= 1 for p in params)


INPUT_MODES = ("float", "quantized", "corrected")


@dataclass
class Calibration:
    """Settings of calibrated PTQ.

    Attributes:
        data: a DataLoader, or any re-iterable of batches; a batch is an input tensor, a tuple/list
            whose first item is the input (labels are ignored), or a mapping of keyword inputs (a
            tokenizer's output, for Hugging Face models; padding tokens are left out of H).
        output_aware: solve each layer under tr((W - Ŵ) H (W - Ŵ)ᵀ) with H = Σ x xᵀ over its inputs
            (BQQ and GPTQ use H; under ``method="auto"`` the candidates are compared by this error).
        inputs: where each layer's x comes from. ``"corrected"`` (default): layers are quantized in
            forward order; each sees the outputs of the already-quantized layers before it (x̃) and fits
            the FP model's outputs W x from them: minimizes Σ ‖W x - Ŵ x̃‖², so errors made upstream get
            corrected (the FP model runs beside it; one partial forward of both per stage).
            ``"quantized"``: the same order with the target W x̃ (GPTQ's); ``"float"``: every H from
            the FP model in one pass (cheapest; errors add up downstream). The default is chosen by
            measurement: on MiniLM at 2* BQQ, ``"corrected"`` keeps the embeddings far closer to the FP
            model's than either other mode (``benchmarks/results/ptq_transformer.md``).
        epochs, lr: c-BQQ after quantization: Adam on biases and norm parameters for ``epochs`` passes
            over ``data`` (0: none).
        refit_scales: in c-BQQ, also train the FP32 scalars of groups with binary codes (BQQ, BCQ), the
            binaries fixed, as relative changes at ``lr`` (see :func:`bqq.ptq.modules.trainable_scalars`).
        blockwise: for a model made of a stack of repeated blocks (decoder / encoder layers, ViT blocks;
            found by :func:`bqq.ptq.blocks.find_stack`), run the pass block by block
            (:mod:`bqq.ptq.blocks`): the inputs of the first block are captured once, each block is
            solved stage by stage on its stored inputs and then run once to give the next block's.
            Forwards grow linearly with depth and only one block's FP copy exists at a time; the
            results equal the whole-model pass (False), which re-runs the model for every stage.
        device: where each block runs during the block-by-block pass (e.g. ``"cuda"`` for a model kept on
            the CPU): a block moves there for its turn and back; the stored activations stay on the
            model's device. None: the model's device.
    """

    data: Iterable[Any]
    output_aware: bool = True
    inputs: str = "corrected"
    epochs: int = 0
    lr: float = 1e-3
    refit_scales: bool = False
    blockwise: bool = True
    device: str | torch.device | None = None

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise ValueError(f"epochs must be an integer >= 0, got {self.epochs!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.inputs not in INPUT_MODES:
            raise ValueError(f"inputs must be one of {INPUT_MODES}, got {self.inputs!r}")
        if not isinstance(self.output_aware, bool):
            raise ValueError(f"output_aware must be True or False, got {self.output_aware!r}")
        if not isinstance(self.blockwise, bool):
            raise ValueError(f"blockwise must be True or False, got {self.blockwise!r}")
        if self.device is not None:
            self.device = torch.device(self.device)  # raises on an unknown device string
        if isinstance(self.data, torch.Tensor) or not isinstance(self.data, Iterable):
            raise ValueError("calibration data must be a DataLoader or an iterable of batches")
        if not self.output_aware and self.epochs == 0:
            raise ValueError("this calibration does nothing: set output_aware=True or epochs > 0")


def tunable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every bias, and every parameter of a normalization layer."""
    chosen: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name == "bias" or is_norm(module):
                chosen[id(p)] = p
    return list(chosen.values())


def calibrate(model: nn.Module, teacher: nn.Module, calibration: Calibration, *,
              progress: bool | None = None) -> list[float]:
    """c-BQQ: tune ``model``'s biases and norms to match ``teacher``'s outputs for ``calibration.epochs``
    epochs; returns the mean loss per epoch."""
    params = tunable_parameters(model)
    if not params:
        raise ValueError("the model has no biases or normalization parameters to calibrate")
    flags = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    was_training = model.training, teacher.training
    model.eval()
    teacher.eval()
    device = next(model.parameters()).device
    history = []
    try:
        with cached_weights(model), _maybe_scalars(model, calibration.refit_scales) as scalars:
            optimizer = torch.optim.Adam(params + scalars, lr=calibration.lr)
            for _ in progress_bar(range(calibration.epochs), progress=progress, desc="calibrate", unit="epoch"):
                total, batches = 0.0, 0
                for batch in calibration.data:
                    with torch.no_grad():
                        target = output_tensor(run_model(teacher, batch, device))
                    loss = F.mse_loss(output_tensor(run_model(model, batch, device)), target)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total, batches = total + loss.item(), batches + 1
                if batches == 0:
                    raise ValueError("calibration data yielded no batches")
                history.append(total / batches)
    finally:
        for p in model.parameters():
            p.requires_grad_(flags.get(id(p), True))
        model.train(was_training[0])
        teacher.train(was_training[1])
    return history


@contextlib.contextmanager
def _maybe_scalars(model: nn.Module, enabled: bool):
    if not enabled:
        yield []
        return
    with trainable_scalars(model) as scalars:
        yield scalars


def output_tensor(out: Any) -> torch.Tensor:
    """A model's main output: the tensor itself, or the first tensor of a tuple or a Hugging Face
    ``ModelOutput`` (``last_hidden_state``, ``logits``)."""
    if isinstance(out, torch.Tensor):
        return out
    items = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else ()
    for item in items:
        if isinstance(item, torch.Tensor):
            return item
    raise TypeError(f"cannot find an output tensor in a {type(out).__name__}")
