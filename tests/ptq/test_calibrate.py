"""The calibrated model pass (bqq.ptq.calibrate, bqq.Calibration): layers solved under their H, inputs taken
from the float, quantized or corrected model, caches, spreading groups, c-BQQ settings, massive channels.
(H collection: test_hessian.py; the output-aware solver: tests/solver/ and tests/methods/test_bqq.py; GPTQ:
tests/methods/test_gptq.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import bqq
from bqq.ptq import runner as ptq_runner
from bqq.ptq.hessian import collect_hessians
from bqq.ptq.runner import layer_seed
from bqq.solver import clipped_channels, prepare_hessian
from tests.helpers import FAST, model_outputs, tiny

BASIS = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(7))


def calibration_batches(count: int = 4):
    """Images near a 5-dimensional subspace: correlated inputs, as real data has (white noise has H ≈ I)."""
    batches = []
    for i in range(count):
        gen = torch.Generator().manual_seed(100 + i)
        coef = torch.randn(8, 5, generator=gen)
        noise = 0.1 * torch.randn(8, 3, 8, 8, generator=gen)
        batches.append(((coef @ BASIS.reshape(5, -1)).reshape(8, 3, 8, 8) + noise,))
    return batches


def outputs(model, batches):
    with torch.no_grad():
        return torch.cat([model(x) for (x,) in batches])


def test_a_calibrated_layer_equals_compress_with_its_hessian():
    data = calibration_batches()
    stats = collect_hessians(tiny(), ["blocks.1.fc1"], data)
    model = bqq.quantize(tiny(), bits=2, method="bqq", group_size=16, seed=4,
                         calibration=bqq.Calibration(data, inputs="float"), **FAST)
    w = tiny().blocks[1].fc1.weight.detach()
    expected = bqq.compress(w, 2, group_size=16, seed=layer_seed(4, "blocks.1.fc1"),
                            hessian=stats["blocks.1.fc1"][0], **FAST)
    assert torch.equal(model.blocks[1].fc1.qweight.dequantize(), expected.dequantize())
    assert model.blocks[1].fc1.selection["objective"] == "output"


@pytest.mark.parametrize("inputs", ["quantized", "float", "corrected"])
def test_calibrated_auto_beats_data_free_on_held_out_inputs(inputs, tmp_path):
    fp = tiny()
    batches = calibration_batches(24)
    data, held_out = batches[:16], batches[16:]
    free = bqq.quantize(tiny(), bits=2, **FAST)
    aware = bqq.quantize(tiny(), bits=2, calibration=bqq.Calibration(data, inputs=inputs), **FAST)
    ref = outputs(fp, held_out)
    err = {name: float(((outputs(m, held_out) - ref) ** 2).mean()) for name, m in (("free", free), ("aware", aware))}
    assert err["aware"] < 0.85 * err["free"]  # measured: 0.76 (quantized inputs), 0.69 (float), 0.30 (corrected)
    assert all("gptq" in layer.selection["candidates"] for _, layer in quantized_layers(aware))
    bqq.save_quantized(aware, tmp_path / "aware.safetensors")
    restored = bqq.load_quantized(tmp_path / "aware.safetensors", tiny(seed=9))
    assert torch.equal(outputs(restored, held_out), outputs(aware, held_out))


def test_corrected_inputs_fit_the_float_model_from_quantized_inputs():
    fp = tiny()
    batches = calibration_batches(24)
    data, held_out = batches[:16], batches[16:]
    ref = outputs(fp, held_out)
    err = {}
    for inputs in ("quantized", "corrected"):
        q = bqq.quantize(tiny(), bits=2, method="gptq", calibration=bqq.Calibration(data, inputs=inputs))
        err[inputs] = float(((outputs(q, held_out) - ref) ** 2).mean())
    assert err["corrected"] < 0.7 * err["quantized"]  # measured: 0.53


def quantized_layers(model):
    return bqq.ptq.quantized_layers(model)


def test_calibrated_quantize_resumes_from_its_cache(tmp_path):
    data = calibration_batches()
    first = bqq.quantize(tiny(), bits=1, calibration=data, cache_dir=tmp_path, **FAST)
    files = sorted(p.name for p in tmp_path.iterdir())
    second = bqq.quantize(tiny(), bits=1, calibration=data, cache_dir=tmp_path, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    x = calibration_batches(5)[4:]
    assert torch.equal(outputs(first, x), outputs(second, x))


@pytest.fixture(scope="module")
def spread_case():
    """A calibrated BQQ pass whose layers have several column and row blocks (8 x 8 groups), solved in this
    process: its settings and the model."""
    settings = {"bits": 2, "method": "bqq", "group_size": (8, 8),
                "calibration": bqq.Calibration(calibration_batches(), inputs="float"), **FAST}
    return settings, bqq.quantize(tiny(), **settings)


def assert_same_model(a, b):
    for (name, qa), (_, qb) in zip(quantized_layers(a), quantized_layers(b), strict=True):
        assert torch.equal(qa.qweight.dequantize(), qb.qweight.dequantize()), name
    x = calibration_batches(5)[4:]
    assert torch.equal(outputs(a, x), outputs(b, x))


def spy_on_map_solves(monkeypatch) -> list[int]:
    """Record the column blocks whose groups the model pass hands out as tasks."""
    calls, real = [], ptq_runner._map_solves

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(ptq_runner, "_map_solves", spy)
    return calls


def spread_blocks(model) -> int:
    """Column blocks of the layers that spread their groups (several row blocks)."""
    return sum(len(q.qweight.grid.col_sizes) for _, q in quantized_layers(model) if len(q.qweight.grid.row_sizes) > 1)


def test_calibrated_bqq_spreads_its_groups_over_processes_with_the_same_codes(spread_case, monkeypatch, tmp_path):
    settings, reference = spread_case
    calls = spy_on_map_solves(monkeypatch)
    parallel = bqq.quantize(tiny(), workers=2, cache_dir=tmp_path, **settings)
    assert len(calls) == spread_blocks(reference) > 0  # the head (5 rows: one row block) stays one job
    assert_same_model(parallel, reference)
    resumed = bqq.quantize(tiny(), workers=2, cache_dir=tmp_path, **settings)  # every layer from the cache
    assert len(calls) == spread_blocks(reference)
    assert_same_model(resumed, reference)


def test_calibrated_bqq_spreads_its_groups_over_dask(spread_case, monkeypatch):
    distributed = pytest.importorskip("distributed")
    settings, reference = spread_case
    calls = spy_on_map_solves(monkeypatch)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        q = bqq.quantize(tiny(), workers=client.get_executor(), **settings)
    assert len(calls) == spread_blocks(reference)
    assert_same_model(q, reference)


def test_layers_without_data_fall_back_to_data_free():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.used(x)

    torch.manual_seed(0)
    model = bqq.quantize(Branchy(), bits=2, group_size=None, calibration=[torch.randn(4, 8)], **FAST)
    assert model.used.selection["objective"] == "output"
    assert model.unused.selection["objective"] == "weight"


def test_calibration_settings_are_checked():
    with pytest.raises(ValueError, match="inputs must be one of"):
        bqq.Calibration([torch.zeros(1)], inputs="fp")
    with pytest.raises(ValueError, match="does nothing"):
        bqq.Calibration([torch.zeros(1)], output_aware=False)
    with pytest.raises(ValueError, match="no batches"):
        bqq.quantize(tiny(), bits=1, calibration=[], **FAST)


# --- Hugging Face transformers --------------------------------------------------------------------
def test_a_transformers_model_quantizes_with_token_batches_and_round_trips(tmp_path):
    pytest.importorskip("transformers")  # the [hf] extra; CI installs it
    from bqq.compat import import_transformers

    transformers = import_transformers()
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=16)

    def fresh(seed: int):
        torch.manual_seed(seed)
        return transformers.BertModel(config).eval()

    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        ids = torch.randint(0, 50, (6, 12), generator=gen)
        mask = (torch.arange(12)[None] < torch.randint(4, 13, (6, 1), generator=gen)).long()
        batches.append({"input_ids": ids, "attention_mask": mask})
    model = bqq.quantize(fresh(0), bits=2, include="encoder.*", calibration=batches, **FAST)
    layers = dict(bqq.ptq.quantized_layers(model))
    assert len(layers) == 12 and all(layer.selection["objective"] == "output" for layer in layers.values())
    assert layers["encoder.layer.0.intermediate.dense"].qweight.group_shape == (32, 32)  # config.hidden_size

    bqq.save_quantized(model, tmp_path / "bert.safetensors")
    restored = bqq.load_quantized(tmp_path / "bert.safetensors", fresh(1))
    with torch.no_grad():
        for batch in batches:
            assert torch.equal(restored(**batch).last_hidden_state, model(**batch).last_hidden_state)


def test_a_massive_input_channel_is_capped_before_bqq_sees_it():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 12))
    x[:, 3] *= 40.0  # one "massive activation" channel
    h = prepare_hessian(x.T @ x)
    capped = clipped_channels(h, 3.0)
    diag = np.diag(capped)
    assert diag[3] <= 3.0 * np.median(diag) * (1 + 1e-9)
    assert np.trace(capped) == pytest.approx(12.0)
    # Correlations are kept: the cap rescales channels, it does not decorrelate them.
    corr = lambda m: m / np.sqrt(np.outer(np.diag(m), np.diag(m)))  # noqa: E731
    np.testing.assert_allclose(corr(capped), corr(h), atol=1e-12)
    np.testing.assert_allclose(clipped_channels(h, 1e9), h, rtol=1e-12)


def test_auto_compares_candidates_with_massive_channels_capped():
    """A candidate that reproduces one huge input channel and wrecks the others must not win."""
    from bqq.ptq.quantize import relative_error, select

    class Rebuilt:  # the one thing select() reads from a candidate
        def __init__(self, w_hat):
            self.w_hat = w_hat

        def _dequantize64(self):
            return self.w_hat

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 32))
    h = np.eye(32)
    h[5, 5] = 600.0  # a massive activation channel
    h = prepare_hessian(h)
    channel_only = w + rng.standard_normal(w.shape)  # every column off by ~100 % ...
    channel_only[:, 5] = w[:, 5]  # ... except the massive one, exact
    the_rest = w + 0.1 * rng.standard_normal(w.shape)
    the_rest[:, 5] = 0.0
    candidates = {"a": Rebuilt(channel_only), "b": Rebuilt(the_rest)}
    assert relative_error(w, candidates["a"], h) < relative_error(w, candidates["b"], h)  # raw H ranks it first
    best, info = select(candidates, w, h)
    assert best is candidates["b"] and info["objective"] == "output"


# --- c-BQQ: tuning biases and norms ------------------------------------------------------------------

def test_calibration_tunes_only_biases_and_norms(images):
    fp = tiny()
    data = [(torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(i)),) for i in range(8)]
    free = bqq.quantize(tiny(), bits=1, **FAST)
    calibrated = bqq.quantize(tiny(), bits=1, calibration=bqq.Calibration(data, output_aware=False, epochs=5), **FAST)
    ref = model_outputs(fp, images)
    err_free = ((model_outputs(free, images) - ref) ** 2).mean()
    err_cal = ((model_outputs(calibrated, images) - ref) ** 2).mean()
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
        return sum(((model_outputs(model, x) - model_outputs(fp, x)) ** 2).mean() for (x,) in data)

    assert loss(refit) < loss(plain)
    bqq.save_quantized(refit, tmp_path / "refit.safetensors")  # refitted scalars persist
    restored = bqq.load_quantized(tmp_path / "refit.safetensors", tiny(seed=5))
    assert torch.equal(model_outputs(restored, data[0][0]), model_outputs(refit, data[0][0]))


def test_calibration_rejects_bad_data():
    with pytest.raises(ValueError, match="calibration data"):
        bqq.quantize(tiny(), bits=1, calibration=torch.zeros(2, 3, 8, 8), **FAST)
    with pytest.raises(TypeError, match="calibration batch"):
        bqq.quantize(tiny(), bits=1, calibration=[[1, 2]], **FAST)
