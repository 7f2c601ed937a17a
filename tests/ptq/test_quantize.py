"""Model PTQ: bqq.quantize on non-timm and timm models, save/load, resume, executors, calibration."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numba
import pytest
import torch
from torch import nn

import bqq
from bqq.ptq import QuantizedConv2d, QuantizedLinear, quantized_layers
from bqq.ptq import runner as ptq_runner
from tests.helpers import FAST, ROOT, TinyTransformer, tiny


@pytest.fixture
def images():
    return torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_quantize_replaces_linear_and_conv_and_keeps_the_rest(images):
    model = tiny()
    ref = model(images)
    norm_before = model.norm.weight.clone()
    q = bqq.quantize(model, bits=3, **FAST)
    assert q is model
    names = {n for n, _ in quantized_layers(q)}
    assert names == {"patch", "head"} | {f"blocks.{i}.{m}" for i in range(2) for m in ("qkv", "proj", "fc1", "fc2")}
    assert isinstance(q.patch, QuantizedConv2d) and isinstance(q.head, QuantizedLinear)
    assert isinstance(q.norm, nn.LayerNorm) and torch.equal(q.norm.weight, norm_before)
    assert q.blocks[0].fc2.bias is None and q.blocks[0].fc1.bias is not None
    assert not any("weight" in n and "norm" not in n for n, _ in q.named_parameters())  # no dense weights kept
    err3 = ((q(images) - ref) ** 2).mean()
    err1 = ((bqq.quantize(tiny(), bits=1, **FAST)(images) - ref) ** 2).mean()
    # 1 stack on 24x24 random layers is noisy (its error straddles ref² over seeds); 3 stacks are not.
    assert err3 < 0.5 * err1 and err3 < 0.5 * (ref**2).mean()


def test_default_groups_follow_the_model_width():
    q = bqq.quantize(tiny(), bits=1, **FAST)
    assert q.blocks[0].qkv.qweight.grid.group_shape == (24, 24)  # embed_dim squares
    assert len(q.blocks[0].fc1.qweight.grid) == 2
    q = bqq.quantize(tiny(), bits=1, group_size=(12, 8), **FAST)
    assert q.blocks[0].proj.qweight.grid.group_shape == (12, 8)


def test_include_exclude_and_overrides():
    q = bqq.quantize(tiny(), bits=2, method="bqq", exclude=["head", "patch"],
                     overrides={"blocks.0.*": {"bits": 4}, "blocks.1.fc?": {"method": "uq", "bits": 3}}, **FAST)
    assert isinstance(q.head, nn.Linear) and isinstance(q.patch, nn.Conv2d)
    assert q.blocks[0].qkv.qweight.bits == 4
    assert (q.blocks[1].fc1.qweight.method, q.blocks[1].fc1.qweight.bits) == ("uq", 3)
    assert (q.blocks[1].qkv.qweight.method, q.blocks[1].qkv.qweight.bits) == ("bqq", 2)
    q = bqq.quantize(tiny(), bits=2, include="blocks.1.*", **FAST)
    assert {n for n, _ in quantized_layers(q)} == {f"blocks.1.{m}" for m in ("qkv", "proj", "fc1", "fc2")}


@pytest.mark.parametrize("kwargs, match", [
    ({"bits": 0}, "bits"),
    ({"bits": 2, "method": "nope"}, "unknown method"),
    ({"bits": 2, "include": "nothing.*"}, "nothing to quantize"),
    ({"bits": 2, "overrides": {"missing": {"bits": 3}}}, "match no"),
    ({"bits": 2, "overrides": {"head": {"bits": 99}}}, "'head'"),
    ({"bits": 2, "sweps": 3}, "sweps"),
    ({"bits": 2, "workers": "many"}, "workers"),
])
def test_bad_arguments_fail_before_any_work(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        bqq.quantize(tiny(), **kwargs)


def test_bad_weights_and_models_are_named():
    model = tiny()
    with torch.no_grad():
        model.blocks[1].proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"blocks\.1\.proj"):
        bqq.quantize(model, bits=2, **FAST)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        bqq.quantize(torch.zeros(3, 3), bits=2)
    with pytest.raises(ValueError, match="wrap"):
        bqq.quantize(nn.Linear(4, 4), bits=2)


@pytest.mark.parametrize("method", ["bqq", "uq", "bcq"])
def test_save_load_round_trip_is_exact(tmp_path, images, method):
    q = bqq.quantize(tiny(), bits=2, method=method, **(FAST if method == "bqq" else {}))
    out = q(images)
    config_path = bqq.save_quantized(q, tmp_path / "model.safetensors", model_name="tiny")
    assert config_path.exists() and '"model_name": "tiny"' in config_path.read_text()
    fresh = tiny(seed=123)  # different random weights: everything must come from the file
    restored = bqq.load_quantized(tmp_path / "model.safetensors", fresh)
    assert torch.equal(restored(images), out)
    assert isinstance(restored.patch, QuantizedConv2d)


def test_load_rejects_a_different_architecture_and_a_tampered_file(tmp_path):
    q = bqq.quantize(tiny(), bits=1, **FAST)
    path = tmp_path / "model.safetensors"
    bqq.save_quantized(q, path)
    with pytest.raises(ValueError):
        bqq.load_quantized(path, TinyTransformer(d=16))
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(bqq.FormatError):
        bqq.load_quantized(path, tiny())


def test_bfloat16_model_stays_bfloat16(images):
    q = bqq.quantize(tiny().to(torch.bfloat16), bits=2, **FAST)
    assert q(images.to(torch.bfloat16)).dtype == torch.bfloat16


def _outputs(model, images):
    with torch.no_grad():
        return model(images)


@pytest.mark.parametrize("workers", [1, None], ids=["one-at-a-time", "threads"])
def test_cache_resumes_without_redoing_finished_groups(tmp_path, images, monkeypatch, workers):
    reference_model = bqq.quantize(tiny(), bits=2, method="bqq", **FAST)
    reference = _outputs(reference_model, images)
    total = sum(len(m.qweight.grid) for _, m in quantized_layers(reference_model))
    # One group per call with workers=1; threads solve bundles of groups (each as it would be alone).
    name, groups_in = ("solve_group", lambda job: [job]) if workers == 1 else ("solve_bundle", list)
    real = getattr(ptq_runner, name)
    calls = []
    lock = threading.Lock()

    def interrupted_after_five(unit):
        with lock:
            if len(calls) >= 5:
                raise KeyboardInterrupt
            calls.extend(groups_in(unit))
        return real(unit)

    monkeypatch.setattr(ptq_runner, name, interrupted_after_five)
    with pytest.raises(KeyboardInterrupt):
        bqq.quantize(tiny(), bits=2, method="bqq", cache_dir=tmp_path, workers=workers, **FAST)
    cached = len(list(tmp_path.glob("*.safetensors")))
    # Bundles already running on other threads when the interrupt came may finish and be cached too.
    assert cached == 5 if workers == 1 else cached < total
    counted = []
    monkeypatch.setattr(ptq_runner, name, lambda unit: counted.extend(groups_in(unit)) or real(unit))
    resumed = bqq.quantize(tiny(), bits=2, method="bqq", cache_dir=tmp_path, workers=workers, **FAST)
    assert len(counted) == total - cached
    assert torch.equal(_outputs(resumed, images), reference)
    counted.clear()
    bqq.quantize(tiny(), bits=2, method="bqq", cache_dir=tmp_path, workers=workers, **FAST)
    assert counted == []  # everything cached
    counted.clear()
    bqq.quantize(tiny(), bits=2, method="bqq", cache_dir=tmp_path, seed=1, workers=workers, **FAST)
    assert len(counted) == total  # another seed is other work


def test_groups_side_by_side_on_threads_give_the_same_model(images, monkeypatch):
    """Threads solve bundles of same-shape groups in one call; each group's codes equal its codes alone
    (workers=1), also with a polish that stops on a tolerance (each group on its own flip count)."""
    bundles = []
    real = ptq_runner.solve_bundle
    monkeypatch.setattr(ptq_runner, "solve_bundle",
                        lambda bundle: bundles.append((threading.current_thread().name, len(bundle))) or real(bundle))
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two numba threads")
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    settings = {"bits": 2, "method": "bqq", "group_size": 16, "polish_tolerance": 0.02, **FAST}
    try:
        side_by_side = bqq.quantize(tiny(), **settings)
    finally:
        numba.set_num_threads(before)
    assert all(name.startswith("bqq-group") for name, _ in bundles) and len(bundles) > 1
    assert max(size for _, size in bundles) == ptq_runner.THREAD_BUNDLE
    one_at_a_time = bqq.quantize(tiny(), workers=1, **settings)
    assert torch.equal(_outputs(side_by_side, images), _outputs(one_at_a_time, images))


def test_cache_survives_kill_9(tmp_path, images):
    # 8x8 groups: ~150 small groups, so the kill lands mid-run with several groups done.
    settings = {"bits": 4, "group_size": 8, "sweeps": 300}
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(ROOT)!r})
        import bqq
        from tests.helpers import tiny
        bqq.quantize(tiny(), cache_dir={str(tmp_path)!r}, progress=False, **{settings!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 300
    while len(list(tmp_path.glob("*.safetensors"))) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(tmp_path.glob("*.safetensors")))
    resumed = bqq.quantize(tiny(), cache_dir=tmp_path, **settings)
    total = sum(len(m.qweight.grid) for _, m in quantized_layers(resumed))
    assert 5 <= done < total, (done, total)
    fresh = bqq.quantize(tiny(), **settings)
    assert torch.equal(_outputs(resumed, images), _outputs(fresh, images))


def test_process_workers_give_identical_results(images):
    sequential = _outputs(bqq.quantize(tiny(), bits=2, **FAST), images)
    parallel = _outputs(bqq.quantize(tiny(), bits=2, workers=2, **FAST), images)
    assert torch.equal(parallel, sequential)


def test_dask_executor_on_loopback(images):
    distributed = pytest.importorskip("distributed")
    sequential = _outputs(bqq.quantize(tiny(), bits=2, **FAST), images)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        q = bqq.quantize(tiny(), bits=2, workers=client.get_executor(), **FAST)
    assert torch.equal(_outputs(q, images), sequential)


def test_calibration_tunes_only_biases_and_norms(images):
    fp = tiny()
    data = [(torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(i)),) for i in range(8)]
    free = bqq.quantize(tiny(), bits=1, **FAST)
    calibrated = bqq.quantize(tiny(), bits=1, calibration=bqq.Calibration(data, output_aware=False, epochs=5), **FAST)
    ref = _outputs(fp, images)
    err_free = ((_outputs(free, images) - ref) ** 2).mean()
    err_cal = ((_outputs(calibrated, images) - ref) ** 2).mean()
    assert err_cal < 0.8 * err_free
    assert torch.equal(calibrated.blocks[0].qkv.qweight.dequantize(), free.blocks[0].qkv.qweight.dequantize())
    assert not torch.equal(calibrated.blocks[0].qkv.bias, free.blocks[0].qkv.bias)
    assert not torch.equal(calibrated.norm.weight, free.norm.weight)
    assert torch.equal(calibrated.pos, free.pos)  # not a bias or norm: frozen
    assert all(p.requires_grad for p in calibrated.parameters())  # flags restored


def test_calibration_can_refit_scalars_with_binaries_fixed(tmp_path):
    fp = tiny()
    data = [(torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(i)),) for i in range(8)]
    tune = {"output_aware": False, "epochs": 4}  # c-BQQ alone: the binaries stay the data-free ones
    plain = bqq.quantize(tiny(), bits=1, method="bqq", calibration=bqq.Calibration(data, **tune), **FAST)
    refit = bqq.quantize(tiny(), bits=1, method="bqq", calibration=bqq.Calibration(data, refit_scales=True, **tune),
                         **FAST)
    g_plain, g_refit = plain.blocks[0].fc1.qweight, refit.blocks[0].fc1.qweight
    assert all(torch.equal(torch.from_numpy(a), torch.from_numpy(b)) for a, b in zip(g_plain.y, g_refit.y, strict=True))
    assert not torch.equal(torch.from_numpy(g_plain.scales), torch.from_numpy(g_refit.scales))

    def loss(model):
        return sum(((_outputs(model, x) - _outputs(fp, x)) ** 2).mean() for (x,) in data)

    assert loss(refit) < loss(plain)
    bqq.save_quantized(refit, tmp_path / "refit.safetensors")  # refitted scalars persist
    restored = bqq.load_quantized(tmp_path / "refit.safetensors", tiny(seed=5))
    assert torch.equal(_outputs(restored, data[0][0]), _outputs(refit, data[0][0]))


def test_calibration_rejects_bad_data():
    with pytest.raises(ValueError, match="calibration data"):
        bqq.quantize(tiny(), bits=1, calibration=torch.zeros(2, 3, 8, 8), **FAST)
    with pytest.raises(TypeError, match="calibration batch"):
        bqq.quantize(tiny(), bits=1, calibration=[[1, 2]], **FAST)


def test_timm_vit_round_trip(tmp_path):
    from bqq.compat import import_timm

    timm = import_timm()
    torch.manual_seed(0)
    make = lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,  # noqa: E731
                                     embed_dim=48, depth=2, num_heads=2, num_classes=7).eval()
    model = make()
    x = torch.randn(2, 3, 32, 32)
    q = bqq.quantize(model, bits=2, **FAST)
    assert isinstance(q.patch_embed.proj, QuantizedConv2d)
    assert q.head.qweight.grid.group_shape == (7, 48)  # head groups: 100x96, clipped
    assert q.blocks[0].attn.qkv.qweight.grid.group_shape == (48, 48)  # embed_dim squares
    out = _outputs(q, x)
    bqq.save_quantized(q, tmp_path / "vit.safetensors")
    torch.manual_seed(1)
    assert torch.equal(_outputs(bqq.load_quantized(tmp_path / "vit.safetensors", make()), x), out)


def test_pretrained_weights_fail_fast_offline(monkeypatch):
    from bqq.compat import import_timm

    timm = import_timm()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(Exception):  # noqa: B017 (hub errors differ between versions)
        timm.create_model("deit_tiny_patch16_224", pretrained=True)
    assert time.time() - start < 30
