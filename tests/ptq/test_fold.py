"""bqq.ptq.fold: inference-time BatchNorm folded into the convolution before it, with and without calibration data."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bqq
from bqq.ptq.fold import fold_batchnorm
from tests.ptq.common import SamePadConv, relative


def _trained_like_bn(model: nn.Module) -> nn.Module:
    """Running statistics and affine parameters far from the init's identity, as after training."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.5 * torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(0.1 + 3 * torch.rand(m.num_features, generator=gen))
            m.weight.data.copy_(0.2 + 2 * torch.rand(m.num_features, generator=gen))
            m.bias.data.copy_(0.3 * torch.randn(m.num_features, generator=gen))
    return model.eval()


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = SamePadConv(16, 16, 3, stride=2), nn.BatchNorm2d(16)
        self.std = StandardizedConv(16, 8, 1)
        self.bn3 = nn.BatchNorm2d(8)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        return self.bn3(self.std(x))


class StandardizedConv(nn.Conv2d):
    """Standardizes its weight in forward (timm's StdConv2d): a per-channel scale folded in cancels."""

    def forward(self, x):
        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / self.weight.std((1, 2, 3), keepdim=True)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def test_batchnorm_folds_into_the_convolution_before_it():
    model = _trained_like_bn(ConvBN())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    pairs = fold_batchnorm(model, lambda m: m(x))
    assert pairs == [("conv1", "bn1"), ("conv2", "bn2")]  # the standardizing conv failed the check: restored
    assert torch.allclose(model.bn1.running_mean, torch.zeros(16)) and model.conv1.bias is not None
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)


def test_quantize_folds_batchnorm_with_calibration_data_and_warns_without_an_input():
    model = _trained_like_bn(ConvBN())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    bqq.quantize(model, bits=8, method="uq", calibration=bqq.Calibration([x], inputs="float"), progress=False)
    assert torch.equal(model.bn1.weight.detach(), torch.ones(16))
    with torch.no_grad():
        assert relative(model(x), ref) < 2e-2
    with pytest.warns(UserWarning, match="could not fold BatchNorm"):
        bqq.quantize(_trained_like_bn(ConvBN()), bits=8, method="uq", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bqq.quantize(_trained_like_bn(ConvBN()), bits=8, method="uq", progress=False, fold_bn=False)


def test_the_warning_names_a_function_that_exists():
    """The no-input warning tells users to call bqq.ptq.fold_batchnorm themselves: it is exported there, and
    folding by hand first leaves nothing for quantize to warn about."""
    with pytest.warns(UserWarning, match=r"bqq\.ptq\.fold_batchnorm\(model, lambda m: m\(example\)\)"):
        bqq.quantize(_trained_like_bn(ConvBN()), bits=8, method="uq", progress=False)
    assert bqq.ptq.fold_batchnorm is fold_batchnorm
    model, x = _trained_like_bn(ConvBN()), torch.randn(1, 3, 16, 16)
    bqq.ptq.fold_batchnorm(model, lambda m: m(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bqq.quantize(model, bits=8, method="uq", progress=False)
