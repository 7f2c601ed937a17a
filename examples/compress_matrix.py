"""Compress a matrix with BQQ and the first-order baselines, grow it, save it and load it back.

    python examples/compress_matrix.py
"""

import tempfile
from pathlib import Path

import torch

import bqq


def main() -> None:
    torch.manual_seed(0)
    # A weight-like matrix: a few strong directions plus noise, 384 x 768 (a ViT patch-embed shape).
    w = torch.randn(384, 16) @ torch.randn(16, 768) / 4 + torch.randn(384, 768)

    for method in bqq.available_methods():
        q = bqq.compress(w, bits=2, method=method, group_size=384)
        err = (q.dequantize() - w).pow(2).mean() / w.pow(2).mean()
        print(f"{method:>4}: relative MSE {err:.4f}, {q.bits_per_weight:.4f} bits/weight, {q.nbytes} bytes")

    # BQQ stacks are greedy: more bits later, without recomputing the first two stacks.
    q = bqq.compress(w, bits=2, group_size=384, progress=True)
    q.extend(1)
    print(f"extended to {q.stacks} stacks: relative MSE {(q.dequantize() - w).pow(2).mean() / w.pow(2).mean():.4f}")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.safetensors"
        bqq.save(q, path)
        back = bqq.load(path)
        print(f"saved {path.stat().st_size} bytes; reload identical: {torch.equal(back.dequantize(), q.dequantize())}")


if __name__ == "__main__":
    main()
