"""Small offline datasets shared by the examples, benchmarks and tests (nothing is downloaded).

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist`` (IDX files in
``/usr/share/datasets/fashion-mnist``) or any folder holding the same four ``.gz`` files.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


def load_fashion_mnist(split: str, root: str | os.PathLike = FASHION_MNIST_DIR) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) float32, normalized, and labels (N,) int64 of ``split`` ("train" or "t10k")."""
    root = Path(root)
    images_path = root / f"{split}-images-idx3-ubyte.gz"
    labels_path = root / f"{split}-labels-idx1-ubyte.gz"
    if not images_path.exists() or not labels_path.exists():
        raise FileNotFoundError(f"Fashion-MNIST not found in {root}; install it with "
                                "'apt-get install dataset-fashion-mnist' or pass the folder with the IDX .gz files")
    images = _read_idx(images_path, 2051).reshape(-1, 1, 28, 28)
    labels = _read_idx(labels_path, 2049)
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels")
    x = (torch.from_numpy(images.copy()).float() / 255.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    return x, torch.from_numpy(labels.astype(np.int64))


def _read_idx(path: Path, magic: int) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    header = np.frombuffer(data[:4], ">u4")[0]
    if header != magic:
        raise ValueError(f"{path}: not an IDX file (magic {header})")
    ndim = data[3]
    dims = np.frombuffer(data[4:4 + 4 * ndim], ">u4")
    body = np.frombuffer(data[4 + 4 * ndim:], np.uint8)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: truncated ({body.size} of {int(np.prod(dims))} values)")
    return body.reshape(dims)
