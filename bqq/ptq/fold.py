"""Folding inference-time BatchNorm into the convolution before it, so quantization errors are measured
where the network sees them.

A BatchNorm in eval mode is a per-channel affine y = γ (x − μ) / √(σ² + ε) + β. After a convolution it
rescales each output channel: quantizing the convolution's weight with ranges shared across channels and
then letting BN multiply a small channel by a large factor amplifies that channel's error. Folding
(W' = W · s, b' = (b − μ) s + β per output channel, s = γ / √(σ² + ε)) moves the scale into the weight,
so the quantizer sees the weight the network effectively uses; the BN is left as the identity
(μ = 0, σ² = 1 − ε, γ = 1, β = 0) so that modules fused with an activation (timm's ``BatchNormAct2d``)
keep working.

Pairs are found by running the model once on an example input: a BN is folded when its input is the very
tensor a convolution returned. Each fold is then checked on the recorded tensors (the convolution alone,
then the BN, must give the BN's recorded output): a convolution whose own ``forward`` does not use its
weight linearly (timm's ``StdConv2d`` standardizes it) fails the check and is restored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# BatchNorm output after folding must match the recorded one to this tolerance (relative to its scale).
FOLD_TOLERANCE = 1e-4


def fold_batchnorm(model: nn.Module, run: Callable[[nn.Module], Any]) -> list[tuple[str, str]]:
    """Fold every eval-mode BatchNorm that directly consumes a convolution's output into it, in place.

    Args:
        model: any module; only its convolutions (``nn.Conv1d/2d/3d`` and subclasses) and BatchNorms
            (subclasses of torch's ``_BatchNorm`` with running statistics) are touched.
        run: calls the model once on an example input (e.g. ``lambda m: m(x)``).

    Returns:
        The (convolution, batchnorm) name pairs folded. In eval mode the model computes the same
        function up to rounding; the folded BNs hold identity statistics (do not train them with batch
        statistics afterwards).
    """
    names = {id(m): n for n, m in model.named_modules()}
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed]
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats and m.running_mean is not None]
    if not convs or not norms:
        return []
    produced: dict[int, tuple[nn.Module, torch.Tensor, torch.Tensor]] = {}  # id(output) -> conv, input, output
    calls: dict[int, int] = {}
    pairs: dict[int, tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]] = {}

    def after_conv(module, args, output):
        calls[id(module)] = calls.get(id(module), 0) + 1
        if isinstance(output, torch.Tensor) and args and isinstance(args[0], torch.Tensor):
            # One sample, cloned: later in-place ops (ReLU(inplace=True), x += shortcut) must not change it.
            produced[id(output)] = (module, args[0][:1].clone(), output)

    def after_norm(module, args, output):
        calls[id(module)] = calls.get(id(module), 0) + 1
        source = produced.get(id(args[0])) if args else None
        if source is not None and source[2] is args[0]:
            pairs[id(module)] = (source[0], module, source[1], output[:1].clone())

    handles = [c.register_forward_hook(after_conv) for c in convs]
    handles += [b.register_forward_hook(after_norm) for b in norms]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run(model)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    folded = []
    consumers: dict[int, int] = {}
    for conv, *_ in pairs.values():
        consumers[id(conv)] = consumers.get(id(conv), 0) + 1
    for conv, norm, x, y in pairs.values():
        # Called once each, and the convolution feeds one BN: then folding changes nothing else.
        if calls.get(id(conv)) != 1 or calls.get(id(norm)) != 1 or consumers[id(conv)] != 1:
            continue
        if _fold_checked(conv, norm, x, y):
            folded.append((names[id(conv)], names[id(norm)]))
    model.bqq_batchnorm_folded = True  # what could be folded is: bqq.quantize does not try (or warn) again
    return folded


def _fold_checked(conv: nn.Module, norm: nn.Module, x: torch.Tensor, y: torch.Tensor) -> bool:
    """Fold one pair, keep it if the pair still maps x to y, else restore both; returns whether kept."""
    saved = ({k: v.detach().clone() for k, v in conv.state_dict().items()},
             {k: v.detach().clone() for k, v in norm.state_dict().items()}, conv.bias)
    _fold(conv, norm)
    was = conv.training, norm.training
    conv.eval()
    norm.eval()
    with torch.no_grad():
        out = norm(conv(x))
    conv.train(was[0])
    norm.train(was[1])
    scale = float(y.abs().max()) or 1.0
    if out.shape == y.shape and float((out - y).abs().max()) <= FOLD_TOLERANCE * scale:
        return True
    conv.bias = saved[2]
    conv.load_state_dict(saved[0])
    norm.load_state_dict(saved[1])
    return False


def _fold(conv: nn.Module, norm: nn.Module) -> None:
    with torch.no_grad():
        mean, var = norm.running_mean.double(), norm.running_var.double()
        gamma = norm.weight.double() if norm.weight is not None else torch.ones_like(mean)
        beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(mean)
        scale = gamma / torch.sqrt(var + norm.eps)
        weight = conv.weight
        shape = (-1,) + (1,) * (weight.dim() - 1)
        weight.copy_((weight.double() * scale.reshape(shape)).to(weight.dtype))
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
        new_bias = ((bias - mean) * scale + beta).to(weight.dtype)
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias, requires_grad=weight.requires_grad)
        else:
            conv.bias.copy_(new_bias)
        norm.running_mean.zero_()
        norm.running_var.fill_(1.0 - norm.eps)
        if norm.weight is not None:
            norm.weight.fill_(1.0)
        if norm.bias is not None:
            norm.bias.zero_()


__all__ = ["fold_batchnorm"]
