import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Without a GPU the Triton kernels run in Triton's interpreter (read when kernels are defined, so set
# it before anything imports bqq_kernels.gpu). With one they are compiled and take CUDA tensors only:
# tests ask bqq_kernels.gpu.interpreted() before running them on CPU tensors.
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest


def standardized(w: np.ndarray) -> np.ndarray:
    return (w - w.mean()) / w.std()


@pytest.fixture
def gaussian():
    """A standardized 64x64 Gaussian."""
    return standardized(np.random.default_rng(0).standard_normal((64, 64)))


@pytest.fixture
def low_rank_noise():
    """A standardized 64x64 rank-4 matrix plus 10% noise: a skewed spectrum."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 4)) @ rng.standard_normal((4, 64)) + 0.3 * rng.standard_normal((64, 64))
    return standardized(w)
