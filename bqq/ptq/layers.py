"""Which modules hold a weight matrix that ``bqq.quantize`` can quantize, and how each is quantized.

One place for every layer type: a module either maps to a :class:`LayerKind` (how its weight reads as
an (out, in) matrix, whether it is replaced by a packed-kernel layer or keeps its own ``forward``, and
whether calibration inputs give it an H) or gets the reason it stays in floating point.

- ``nn.Linear`` and ``groups=1`` zero-padded ``nn.Conv2d`` whose class keeps torch's ``forward`` become
  :class:`~bqq.ptq.modules.QuantizedLinear` / :class:`~bqq.ptq.modules.QuantizedConv2d` (packed kernels).
- ``transformers``' ``Conv1D`` (GPT-2's projections, weight stored (in, out)) computes ``x W + b``, a
  linear layer of Wᵀ: it becomes a ``QuantizedLinear`` of Wᵀ.
- Every other linear or convolution (a subclass with its own ``forward``: timm's ``Conv2dSame`` pads
  TF-style, ``StdConv2d`` standardizes its weight; grouped and depthwise convolutions; ``nn.Conv1d``,
  ``nn.Conv3d``; a Linear whose parent reads its weight directly, as ``nn.MultiheadAttention`` does)
  keeps its module and its ``forward``: its ``weight`` becomes a parametrization that returns the
  dequantized weight (:class:`~bqq.ptq.modules.QuantizedWeight`), so the layer computes exactly what
  its module computes, with Ŵ.
- Embeddings, transposed convolutions and unknown modules with matrix parameters stay FP, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

LINEAR = "linear"  # nn.Linear -> QuantizedLinear
CONV2D = "conv2d"  # groups=1 nn.Conv2d -> QuantizedConv2d
LINEAR_T = "linear_t"  # transformers Conv1D (weight (in, out)) -> QuantizedLinear of Wᵀ
WEIGHT = "weight"  # any other linear/conv: the module stays, its weight is parametrized


@dataclass(frozen=True)
class LayerKind:
    """How one module's weight is quantized."""

    name: str  # LINEAR | CONV2D | LINEAR_T | WEIGHT
    transposed: bool = False  # the module stores its weight as (in, out)
    hessian: bool = True  # its forward input x gives H = Σ x xᵀ of the weight's columns


def layer_kind(module: nn.Module, parent: nn.Module | None = None) -> LayerKind | str:
    """The module's :class:`LayerKind`, or the reason it stays FP (a string; "" for modules without a weight
    matrix, which are not listed). ``parent``: the module that holds it (a Linear inside
    ``nn.MultiheadAttention`` is read through its ``weight``, never called)."""
    if parametrize.is_parametrized(module, "weight"):
        return ""  # already quantized (listed by the coverage report as such)
    if isinstance(module, nn.Linear):
        if _own_forward(module, nn.Linear) or isinstance(parent, nn.MultiheadAttention):
            return LayerKind(WEIGHT)
        return LayerKind(LINEAR)
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return "transposed convolution (weight stored (in, out, ...)) is not supported"
    if isinstance(module, nn.Conv2d):
        if module.groups == 1 and module.padding_mode == "zeros" and not _own_forward(module, nn.Conv2d):
            return LayerKind(CONV2D)
        return LayerKind(WEIGHT, hessian=module.groups == 1)
    if isinstance(module, (nn.Conv1d, nn.Conv3d)):
        return LayerKind(WEIGHT, hessian=False)
    if _is_hf_conv1d(module):
        return LayerKind(LINEAR_T, transposed=True)
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding (a lookup table, not a matrix that multiplies inputs)"
    matrices = [n for n, p in module.named_parameters(recurse=False) if p.dim() >= 2]
    unknown = [n for n in matrices if not any(word in n.lower() for word in _TOKEN_WORDS)]
    if unknown:
        return f"{type(module).__name__} is not a known layer type (its {', '.join(matrices)} stay FP)"
    if matrices:
        return f"{', '.join(matrices)}: {TOKENS_REASON}"
    return ""


# Parameters named like these are tokens or position embeddings (added to activations, not multiplied).
_TOKEN_WORDS = ("embed", "token", "pos")
TOKENS_REASON = "tokens / position embeddings (added, not multiplied; kept FP as in the paper)"


def weight_matrix(module: nn.Module, kind: LayerKind) -> torch.Tensor:
    """The module's weight as the (out, in·k...) matrix that is quantized (a view, no copy)."""
    weight = module.weight
    if kind.transposed:
        return weight.t()
    return weight.reshape(weight.shape[0], -1)


def matrix_shape(module: nn.Module, kind: LayerKind) -> tuple[int, int]:
    shape = module.weight.shape
    if kind.transposed:
        return shape[1], shape[0]
    return shape[0], module.weight[0].numel()


def _own_forward(module: nn.Module, base: type[nn.Module]) -> bool:
    """Whether the module's class overrides ``base.forward`` (then only its own forward is trusted)."""
    return type(module).forward is not base.forward


def _is_hf_conv1d(module: nn.Module) -> bool:
    cls = type(module)
    weight = getattr(module, "weight", None)
    return (cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")
            and isinstance(weight, torch.Tensor) and weight.dim() == 2
            and tuple(weight.shape) == (getattr(module, "nx", None), getattr(module, "nf", None)))


__all__ = ["CONV2D", "LINEAR", "LINEAR_T", "WEIGHT", "LayerKind", "layer_kind", "matrix_shape", "weight_matrix"]
