"""benchmarks/ptq_vit.py end to end on an ImageNet-style imagefolder with tiny weights; failing fast without them."""

import json

import numpy as np
import pytest
import torch

from benchmarks import ptq_vit


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


