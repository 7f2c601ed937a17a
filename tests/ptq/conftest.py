"""Fixtures of the model-PTQ tests."""

import pytest
import torch


@pytest.fixture
def images():
    return torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
