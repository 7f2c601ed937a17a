"""One grouped QuantizedMatrix from compress to model pass to file to kernel; versioned configs."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import bqq
import bqq_kernels
from bqq.format import read_file
from bqq.grouping import GroupGrid
from bqq.methods import bits_meanings, get_method
from bqq.ptq import quantized_layers
from bqq.ptq.runner import layer_seed

FAST = {"bqq": {"sweeps": 40}, "vq": {"restarts": 1, "iterations": 5}}
BITS = {"bqq": 2, "uq": 2, "bcq": 2, "svd": 12, "svdq": 6, "vq": 3, "lvq": 1}


def weight(m=30, n=44, seed=0):
    return np.random.default_rng(seed).standard_normal((m, n)).astype(np.float32)


def test_from_groups_rejects_mismatched_groups():
    w = weight()
    a = bqq.compress(w[:15, :22], 2, method="uq")
    b = bqq.compress(w[:15, 22:], 3, method="uq")
    grid = GroupGrid.build((15, 44), (15, 22))
    with pytest.raises(ValueError, match="share bits"):
        get_method("uq").from_groups(grid, [a, b])
    with pytest.raises(ValueError, match="2 groups for a grid of 4"):
        get_method("uq").from_groups(GroupGrid.build((30, 44), (15, 22)), [a, a])
    with pytest.raises(ValueError, match="single-group"):
        get_method("bcq").from_groups(grid, [a, a])


def test_quantized_layer_equals_compress_of_its_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(50, 70), nn.ReLU(), nn.Linear(70, 9))
    w = model[0].weight.detach().clone()
    bqq.quantize(model, bits=2, method="bqq", group_size=(32, 24), progress=False, **FAST["bqq"])
    ref = bqq.compress(w, 2, group_size=(32, 24), seed=layer_seed(0, "0"), **FAST["bqq"])
    got = model[0].qweight
    assert len(got.grid) == 3 * 3 and got.seed == ref.seed
    for key, arr in ref.fields().items():
        assert np.array_equal(got.fields()[key], arr), key


def test_group_size_none_means_one_group_per_layer():
    model = nn.Sequential(nn.Linear(40, 30))
    bqq.quantize(model, bits=2, method="uq", group_size=None, progress=False)
    assert len(model[0].qweight.grid) == 1 and model[0].qweight.group_shape == (30, 40)


def test_compressed_grouped_matrix_runs_through_the_kernel():
    w = weight(70, 45)
    q = bqq.compress(w, bits=2, group_size=(32, 20), **FAST["bqq"])
    x = torch.randn(5, 45, generator=torch.Generator().manual_seed(0))
    out = bqq_kernels.bqq_linear(x, q.kernel_layout(), backend="numba-exact")
    torch.testing.assert_close(out, x @ q.dequantize().T, rtol=1e-5, atol=1e-5)
    table = bqq_kernels.bqq_linear(x, q.kernel_layout(), backend="numba-table")
    torch.testing.assert_close(table, out, rtol=1e-3, atol=1e-3)


def test_deit_s_shaped_model_saves_one_manifest_entry_per_layer(tmp_path):
    from bqq.compat import import_timm

    timm = import_timm()
    make = lambda: timm.create_model("deit_small_patch16_224", pretrained=False, img_size=32, depth=1,  # noqa: E731
                                     num_classes=10).eval()
    model = make()
    bqq.quantize(model, bits=1, method="bqq", progress=False, sweeps=5, polish_rounds=1)
    names = {n for n, _ in quantized_layers(model)}
    assert names == {"patch_embed.proj", "blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1",
                     "blocks.0.mlp.fc2", "head"}
    assert len(model.blocks[0].mlp.fc1.qweight.grid) == 4  # 1536x384 in 384x384 groups
    bqq.save_quantized(model, tmp_path / "vit.safetensors")
    _, manifest, _ = read_file(tmp_path / "vit.safetensors")
    assert sorted(manifest["objects"]) == sorted(f"{n}.weight" for n in names)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(bqq.load_quantized(tmp_path / "vit.safetensors", make())(x), model(x))


def test_every_config_has_a_version_and_newer_ones_are_refused(tmp_path):
    for name in bqq.available_methods():
        assert get_method(name).config_class.VERSION >= 1
        assert bits_meanings()[name]
    q = bqq.compress(weight(), 2, method="bcq")
    info = q.info()
    assert info["config_version"] == 1
    info["config_version"] = 99
    with pytest.raises(ValueError, match="version 99 is newer than this bqq reads"):
        type(q).from_fields(info, q.grid, q.fields())
    info["config_version"] = 1
    info["config"] = {"rounds": 3, "speed": 2}
    with pytest.raises(ValueError, match="unknown BCQConfig field"):
        type(q).from_fields(info, q.grid, q.fields())


def test_a_foreign_top_level_kernels_package_does_not_matter(tmp_path):
    """The PyPI distribution `kernels` is often installed beside transformers; ours is `bqq_kernels`."""
    fake = tmp_path / "site" / "kernels"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('this is the foreign kernels package')\n")
    script = textwrap.dedent("""
        import sys
        import torch
        from torch import nn
        import bqq
        model = nn.Sequential(nn.Linear(16, 8))
        bqq.quantize(model, bits=1, method="bqq", sweeps=20, progress=False)
        assert model[0].uses_kernel()
        out = model(torch.randn(3, 16))
        assert out.shape == (3, 8) and "kernels" not in sys.modules
        print("ok")
    """)
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_torch_compile_of_a_quantized_vit_equals_eager():
    from bqq.compat import import_timm

    timm = import_timm()
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                              num_classes=7).eval()
    bqq.quantize(model, bits=2, method="bqq", progress=False, sweeps=10, polish_rounds=1)
    assert all(layer.uses_kernel() for _, layer in quantized_layers(model))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model)(x)
    # Inductor's fused norms round differently from eager: the register tables of the 3-token head then
    # round a few entries the other way (one table step, ~1e-5 of the block's largest sum).
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-4)
