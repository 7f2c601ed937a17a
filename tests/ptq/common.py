"""Modules and measures shared by the model-PTQ tests."""

import torch
import torch.nn.functional as F
from torch import nn


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


class SamePadConv(nn.Conv2d):
    """A subclass with its own forward: TF "SAME" padding, asymmetric at stride 2 (as timm's Conv2dSame)."""

    def forward(self, x):
        return F.conv2d(F.pad(x, (0, 1, 0, 1)), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
