"""benchmarks/ptq_fashion_mnist.py on the real Fashion-MNIST: the checkpoint, 4- and 2-bit BQQ, the loader's hint."""

import pytest

import bqq
from benchmarks import ptq_fashion_mnist as fm
from bqq.datasets import FASHION_MNIST_DIR, load_fashion_mnist


@pytest.fixture(scope="module")
def fashion():
    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST is not installed in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")
    x, y = load_fashion_mnist("t10k")
    return x[:1000], y[:1000]


def test_fashion_checkpoint_is_accurate_and_survives_4_bit_bqq(fashion, tmp_path):
    x, y = fashion
    assert fm.CHECKPOINT.exists(), "missing checkpoint: run python -m benchmarks.ptq_fashion_mnist"
    model = fm.trained_model()
    fp = fm.accuracy(model, x, y)
    assert fp > 85.0  # the committed checkpoint is a real trained model
    q = bqq.quantize(model, bits=4, sweeps=300)
    acc = fm.accuracy(q, x, y)
    assert acc > fp - 3.0, (fp, acc)
    bqq.save_quantized(q, tmp_path / "fashion.safetensors")
    restored = bqq.load_quantized(tmp_path / "fashion.safetensors", fm.make_vit())
    assert fm.accuracy(restored, x, y) == acc


def test_default_2_bit_does_not_collapse_on_a_4x4_patch_vit(fashion):
    """A ViT with a small patch embedding: BQQ on its 64x16 patch embedding (and UQ/BCQ per tensor) collapse the
    model; the default (auto, with the channel-wise patch rule) keeps it."""
    x, y = fashion
    spec = fm.MODELS["patch4"]
    assert spec.checkpoint.exists(), "missing checkpoint: run python -m benchmarks.ptq_fashion_mnist --model patch4"
    fp = fm.accuracy(fm.trained_model(spec=spec), x, y)
    auto = fm.accuracy(bqq.quantize(fm.trained_model(spec=spec), bits=2, sweeps=200, progress=False), x, y)
    bcq = fm.accuracy(bqq.quantize(fm.trained_model(spec=spec), bits=2, method="bcq", progress=False), x, y)
    assert auto > fp - 4.0 and auto > bcq + 10.0, (fp, auto, bcq)


def test_fashion_loader_fails_fast_with_a_hint(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("t10k", root=tmp_path)
