"""bqq.slt: seeded weights, exact masks, coats, freezing, straight-through gradients, export/load, memory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import bqq
import bqq.slt as slt
from bqq.slt.freeze import FREE, LOCKED, PRUNED, frozen_pattern, layer_ratios
from bqq.slt.masks import levels_from_keys, top_k
from bqq.slt.rng import layer_seed, permutation, random_normal, random_signs, splitmix64


def mlp(width: int = 24, bias: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Linear(10, width, bias=bias), nn.ReLU(), nn.Linear(width, width, bias=bias), nn.ReLU(),
                         nn.Linear(width, 3, bias=bias))


def cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, stride=2, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 3 * 3, 4))


def blobs(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian classes in 10-d, linearly separable enough for a supermask to learn."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.randn(3, 10, generator=g) * 2.0
    return centers[y] + torch.randn(n, 10, generator=g), y


# ---- counter-based generator -------------------------------------------------------------------------

def test_rng_is_counter_based_and_keyed():
    key = layer_seed(0, "weight", "fc1")
    assert key != layer_seed(0, "weight", "fc2") != layer_seed(1, "weight", "fc1")
    assert key != layer_seed(0, "score", "fc1")
    draws = splitmix64(key, 1000)
    np.testing.assert_array_equal(draws[:10], splitmix64(key, 10))  # prefix-stable: element i depends on i only
    assert len(np.unique(draws)) == 1000
    signs = random_signs(key, (100, 100))
    assert set(signs.unique().tolist()) == {-1.0, 1.0} and abs(float(signs.mean())) < 0.05
    normal = random_normal(key, (200, 200))
    assert abs(float(normal.mean())) < 0.02 and abs(float(normal.std()) - 1.0) < 0.02
    perm = permutation(key, 97)
    assert sorted(perm.tolist()) == list(range(97))
    with pytest.raises(ValueError, match="seed"):
        layer_seed(-1, "weight", "x")


def test_weights_depend_on_seed_and_name_not_on_module_order():
    a = slt.convert(nn.ModuleDict({"x": nn.Linear(8, 8), "y": nn.Linear(8, 8)}), seed=5)
    b = slt.convert(nn.ModuleDict({"y": nn.Linear(8, 8), "x": nn.Linear(8, 8)}), seed=5)
    c = slt.convert(nn.ModuleDict({"x": nn.Linear(8, 8), "y": nn.Linear(8, 8)}), seed=6)
    assert torch.equal(a["x"].signs, b["x"].signs) and torch.equal(a["y"].scores, b["y"].scores)
    assert not torch.equal(a["x"].signs, a["y"].signs)
    assert not torch.equal(a["x"].signs, c["x"].signs)


def test_convert_leaves_global_rng_alone_and_is_deterministic():
    torch.manual_seed(123)
    dense = mlp()
    before = torch.get_rng_state()
    m1 = slt.convert(dense, method="msup", seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    m2 = slt.convert(mlp(), method="msup", seed=3)
    x = torch.randn(5, 10)
    assert torch.equal(m1(x), m2(x))


# ---- mask math ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("numel", [1, 7, 64, 1001])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_top_k_is_exact_with_and_without_ties(numel, sparsity):
    k = slt.kept_count(numel, sparsity)
    keys = torch.randn(numel)
    mask = top_k(keys, k)
    assert int(mask.sum()) == k
    if 0 < k < numel:
        assert keys[mask].min() >= keys[~mask].max()
    tied = torch.ones(numel)  # all equal: ties go to the lowest indices
    mask = top_k(tied, k)
    assert int(mask.sum()) == k and bool(mask[:k].all())


def test_coat_levels_are_nested_with_exact_counts():
    keys = torch.randn(1000)
    sparsities = slt.coat_sparsities(0.5, 3)
    assert sparsities == pytest.approx((0.5, 2 / 3, 5 / 6))
    keeps = [slt.kept_count(1000, s) for s in sparsities]
    levels = levels_from_keys(keys, keeps)
    assert levels.max() == 3
    for i, keep in enumerate(keeps, start=1):
        assert int((levels >= i).sum()) == keep
    order = torch.argsort(keys, descending=True)
    assert torch.all(levels[order][:-1] >= levels[order][1:])  # higher scores never get lower levels


@pytest.mark.parametrize("bad, match", [
    ({"sparsity": 1.0}, "sparsity must be in"), ({"sparsity": -0.1}, "sparsity must be in"),
    ({"sparsity": [0.5, 0.4], "method": "msup"}, "increase strictly"), ({"method": "msup", "coats": 1}, "at least 2"),
    ({"coats": 3}, "edge_popup uses one mask"), ({"method": "magic"}, "method must be"),
    ({"scope": "layer"}, "scope must be"), ({"scale": "x"}, "scale must be"),
    ({"method": "msup", "coats": 0}, "coats must be a positive"),
    ({"method": "msup", "freeze": slt.FreezeConfig(prune=0.2)}, "not with multicoated"),
])
def test_invalid_settings_name_the_problem(bad, match):
    with pytest.raises(ValueError, match=match):
        slt.convert(mlp(), **bad)


def test_effective_weights_are_signed_constants_times_levels():
    m = slt.convert(mlp(), method="msup", sparsity=0.5, coats=3, seed=1)
    layer = m[2]
    w = layer.effective_weight().detach()
    sigma = math.sqrt(2.0) / math.sqrt(24 * 0.5)  # fan_in * first-coat density
    assert layer.sigma == pytest.approx(sigma)
    assert set(torch.unique((w / sigma).round()).tolist()) <= {-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0}
    torch.testing.assert_close(w, layer.signs * sigma * layer.levels.float())
    none = slt.convert(mlp(), scale="none", seed=1)
    assert none[2].sigma == pytest.approx(math.sqrt(2.0) / math.sqrt(24))


def test_dynamic_scale_uses_actual_density():
    m = slt.convert(mlp(), sparsity=0.75, scale="dynamic", seed=0)
    layer = m[0]
    w = layer.effective_weight().detach()
    torch.testing.assert_close(w, layer.signs * layer.sigma * layer.levels.float() / math.sqrt(layer.density()))


# ---- gradients ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, coats", [("edge_popup", 1), ("msup", 3)])
def test_gradients_reach_scores_only_straight_through(method, coats):
    m = slt.convert(mlp(bias=True), method=method, coats=None if method == "edge_popup" else coats, seed=0)
    assert [n for n, p in m.named_parameters() if p.requires_grad] == [
        "0.scores", "0.bias", "2.scores", "2.bias", "4.scores", "4.bias"]
    assert all(not b.requires_grad for b in m.buffers())
    x = torch.randn(7, 10)
    layer = m[4]
    w_eff = layer.effective_weight()
    w_eff.retain_grad()
    out = nn.functional.linear(m[3](m[2](m[1](m[0](x)))), w_eff, layer.bias)
    out.square().sum().backward()
    expected = w_eff.grad * layer.signs * layer.sigma * coats * torch.sign(layer.scores.detach())
    torch.testing.assert_close(layer.scores.grad, expected)


def test_frozen_weights_get_no_gradient_and_never_flip():
    freeze = slt.FreezeConfig(prune=0.3, lock=0.2)
    m = slt.convert(mlp(), sparsity=0.5, freeze=freeze, seed=2)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1.0)
    x, y = blobs(64)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        frozen = [(layer.pattern != FREE).view(layer.weight_shape) for layer in (m[0], m[2], m[4])]
        for layer, is_frozen in zip((m[0], m[2], m[4]), frozen, strict=True):
            assert torch.all(layer.scores.grad[is_frozen] == 0)
        opt.step()
        for layer in (m[0], m[2], m[4]):
            flat = layer.levels.view(-1)
            assert torch.all(flat[layer.pattern == PRUNED] == 0) and torch.all(flat[layer.pattern == LOCKED] == 1)
            assert int(flat.sum()) == slt.kept_count(layer.numel, 0.5)  # the target counts frozen weights


# ---- freezing ----------------------------------------------------------------------------------------

def test_freezing_counts_and_reachability():
    pattern = frozen_pattern(0, "fc", 1000, 0.35, 0.35)
    assert int((pattern == PRUNED).sum()) == 350 and int((pattern == LOCKED).sum()) == 350
    assert torch.equal(pattern, frozen_pattern(0, "fc", 1000, 0.35, 0.35))
    # The reference code's pitfalls: a pruning ratio above the target, or locking above the density.
    with pytest.raises(ValueError, match="unreachable"):
        slt.convert(mlp(), sparsity=0.3, freeze=slt.FreezeConfig(prune=0.5))
    with pytest.raises(ValueError, match="unreachable"):
        slt.convert(mlp(), sparsity=0.7, freeze=slt.FreezeConfig(lock=0.5))
    with pytest.raises(ValueError, match="exceeds 1"):
        slt.FreezeConfig(prune=0.6, lock=0.6)
    m = slt.convert(mlp(), sparsity=0.0)  # sparsity 0 keeps everything (the reference prunes all)
    assert m[0].density() == 1.0


def test_erk_ratios():
    shapes = {"a": (64, 10), "b": (64, 64), "c": (3, 64)}
    dens = slt.erk_densities(shapes, 0.3)
    total = sum(np.prod(s) for s in shapes.values())
    assert sum(dens[n] * np.prod(s) for n, s in shapes.items()) == pytest.approx(0.3 * total)
    assert all(0.0 <= d <= 1.0 for d in dens.values()) and dens["b"] < dens["a"]
    ratios = layer_ratios(slt.FreezeConfig(prune=0.4, lock=0.3, rule="erk"), shapes)
    frozen = sum((p + r) * np.prod(shapes[n]) for n, (p, r) in ratios.items())
    assert frozen == pytest.approx(0.7 * total)
    assert all(0 <= p <= 1 and 0 <= r <= 1 and p + r <= 1 + 1e-9 for p, r in ratios.values())


def test_global_threshold_ranks_all_layers_together():
    m = slt.convert(mlp(), sparsity=0.6, scope="global", freeze=slt.FreezeConfig(prune=0.2, lock=0.1, rule="erk"),
                    seed=4)
    layers = [layer for _, layer in slt.masked_layers(m)]
    assert len({id(layer.group) for layer in layers}) == 1
    total = sum(layer.numel for layer in layers)
    m(torch.randn(2, 10))  # a forward pass refreshes the shared thresholds
    kept = sum(int((layer.levels > 0).sum()) for layer in layers)
    assert kept == slt.kept_count(total, 0.6)
    free_keys = torch.cat([layer.scores.detach().abs().reshape(-1)[layer.free_mask()] for layer in layers])
    free_levels = torch.cat([layer.levels.reshape(-1)[layer.free_mask()] for layer in layers])
    assert free_keys[free_levels > 0].min() >= free_keys[free_levels == 0].max()


def test_sparsity_ramp():
    m = slt.convert(mlp(), sparsity=0.8)
    slt.set_sparsity_ramp(m, 0.0)
    assert m[0].density() == 1.0
    slt.set_sparsity_ramp(m, 0.5)
    assert m[0].density() == slt.kept_count(m[0].numel, 0.4) / m[0].numel
    with pytest.raises(ValueError, match="ramp"):
        slt.set_sparsity_ramp(m, 1.5)


# ---- training ----------------------------------------------------------------------------------------

def test_supermask_search_learns_and_weights_stay_fixed(tmp_path):
    x, y = blobs(300)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    m = slt.convert(mlp(64), sparsity=0.5, seed=0)
    signs = [layer.signs.clone() for _, layer in slt.masked_layers(m)]
    before = slt.evaluate(m, loader)
    history = slt.fit(m, loader, epochs=8, lr=0.1, progress=False)
    after = slt.evaluate(m, loader)
    assert after > 85.0 and after > before + 20.0, (before, after, history[-1])
    assert all(torch.equal(s, layer.signs) for s, (_, layer) in zip(signs, slt.masked_layers(m), strict=True))


def test_fit_resumes_bit_identically(tmp_path):
    x, y = blobs(200)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    full = slt.convert(mlp(), method="msup", seed=0)
    ref = slt.fit(full, loader, epochs=3, progress=False)

    class Stop(Exception):
        pass

    def stop_after_2(epoch, _):
        if epoch == 2:
            raise Stop

    ckpt = tmp_path / "run.pt"
    part = slt.convert(mlp(), method="msup", seed=0)
    with pytest.raises(Stop):
        slt.fit(part, loader, epochs=3, checkpoint=ckpt, progress=False, on_epoch=stop_after_2)
    resumed = slt.convert(mlp(), method="msup", seed=0)
    hist = slt.fit(resumed, loader, epochs=3, checkpoint=ckpt, progress=False)
    assert hist == ref
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values(),
                                                  strict=True))


def test_nan_scores_raise():
    m = slt.convert(mlp())
    with torch.no_grad():
        m[0].scores[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN"):
        m(torch.randn(2, 10))


# ---- export / load -----------------------------------------------------------------------------------

VARIANTS = [
    dict(method="edge_popup", sparsity=0.5),
    dict(method="edge_popup", sparsity=0.7, scope="global"),
    dict(method="msup", sparsity=0.5, coats=3),
    dict(method="msup", sparsity=[0.7, 0.9212, 0.9685], scope="global"),
    dict(method="edge_popup", sparsity=0.5, freeze=slt.FreezeConfig(prune=0.35, lock=0.35)),
    dict(method="edge_popup", sparsity=0.5, scale="dynamic", freeze=slt.FreezeConfig(prune=0.2, lock=0.1, rule="erk"),
         scope="global"),
]


@pytest.mark.parametrize("settings", VARIANTS, ids=lambda s: "-".join(str(v) for v in s.values())[:40])
def test_export_load_round_trip_is_exact(settings, tmp_path):
    m = slt.convert(cnn(), seed=11, **settings)
    x = torch.randn(4, 2, 8, 8)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):  # move the scores and the BN statistics away from their initial values
        opt.zero_grad()
        m(x).square().mean().backward()
        opt.step()
    m.eval()
    path = tmp_path / "ticket.safetensors"
    slt.export(m, path)
    fresh = slt.load(path, cnn()).eval()
    assert torch.equal(m(x), fresh(x))
    assert all(layer.is_fixed for _, layer in slt.masked_layers(fresh))
    assert fresh.slt_config == m.slt_config
    report = slt.memory_report(m)
    assert slt.memory_report(fresh)["ticket_bits"] == report["ticket_bits"]
    mask_bytes = path.stat().st_size - 4 * report["other_bits"] // 32
    assert mask_bytes < 8000  # seed + packed bits + header: no weights stored
    path2 = tmp_path / "again.safetensors"
    slt.export(fresh, path2)  # a loaded ticket exports the same content
    assert bqq.format.read_file(path)[0].keys() == bqq.format.read_file(path2)[0].keys()


def test_load_rejects_tampering_truncation_and_wrong_models(tmp_path):
    m = slt.convert(cnn(), method="msup", seed=0)
    path = tmp_path / "t.safetensors"
    slt.export(m, path)
    data = bytearray(path.read_bytes())
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(bqq.FormatError, match="truncated"):
        slt.load(bad, cnn())
    data[-3] ^= 0x01
    bad.write_bytes(bytes(data))
    with pytest.raises(bqq.FormatError, match="checksum"):
        slt.load(bad, cnn())
    with pytest.raises(ValueError, match="weight shape"):
        slt.load(path, nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                     nn.Conv2d(6, 6, 3, stride=2, groups=2), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(6 * 3 * 3, 4)))
    with pytest.raises(ValueError, match="the model has Linear there"):
        slt.load(path, mlp())
    with pytest.raises(bqq.FormatError, match=r"bqq\.slt\.load"):
        bqq.load(path)
    q = tmp_path / "q.safetensors"
    bqq.save(bqq.compress(torch.randn(16, 16), bits=2, method="uq"), q)
    with pytest.raises(bqq.FormatError, match="not an SLT ticket"):
        slt.load(q, cnn())


def test_export_needs_masked_layers(tmp_path):
    with pytest.raises(ValueError, match="convert"):
        slt.export(mlp(), tmp_path / "x.safetensors")
    m = slt.convert(mlp())
    with pytest.raises(ValueError, match="already has masked layers"):
        slt.convert(m)


# ---- memory accounting -------------------------------------------------------------------------------

def gin_arxiv_linears() -> nn.ModuleDict:
    """The linear layers of paper B's GIN on ogbn-arxiv: 128 -> 386 -> 386 -> 386 -> 40 plus a 386 -> 40 head."""
    dims = {"l0": (128, 386), "l1": (386, 386), "l2": (386, 386), "l3": (386, 40), "head": (386, 40)}
    return nn.ModuleDict({name: nn.Linear(i, o, bias=False) for name, (i, o) in dims.items()})


def test_memory_report_counts_like_the_papers():
    report = slt.memory_report(slt.convert(gin_arxiv_linears(), sparsity=0.7), seed_bits=32)
    assert report["masked_weights"] == 378_280 and report["dense_bits"] == 12_104_960
    assert report["ticket_bits"] == 378_280 + 32 and report["reduction"] == pytest.approx(0.969, abs=5e-4)
    frozen = slt.convert(gin_arxiv_linears(), sparsity=0.7, freeze=slt.FreezeConfig(prune=0.5, lock=0.2))
    assert slt.memory_report(frozen)["mask_bits"] == pytest.approx(0.3 * 378_280, abs=5)  # 99.06 % reduction
    msup = slt.memory_report(slt.convert(mlp(), method="msup", sparsity=[0.7, 0.9212, 0.9685]))
    assert msup["masked_weights"] == 10 * 24 + 24 * 24 + 24 * 3
    expected = sum(layer["weights"] * (1 + 0.3 + 0.0788) for layer in msup["layers"])  # hierarchical coats
    assert msup["mask_bits"] == pytest.approx(expected, abs=6)


def test_memory_report_counts_other_parameters():
    r = slt.memory_report(slt.convert(cnn(), seed=0))
    other = 12 + 6 + 4  # affine BN weight and bias, the grouped conv's bias, the linear's bias
    assert r["other_bits"] == 32 * other
    assert r["dense_bits"] == 32 * (r["masked_weights"] + other)
    assert r["ticket_bits"] == 64 + r["mask_bits"] + 32 * other
    with_stats = slt.memory_report(slt.convert(cnn(), seed=0), count_norm_stats=True)
    assert with_stats["other_bits"] == r["other_bits"] + 32 * 12  # running mean and var


def test_standalone_layers_and_fix_mask():
    lin = slt.MaskedLinear(12, 5, bias=True, seed=1, key="enc", sparsity=0.4)
    conv = slt.MaskedConv2d(4, 6, 3, stride=2, padding=1, groups=2, seed=1, key="conv", sparsity=[0.5, 0.75])
    assert lin(torch.randn(3, 12)).shape == (3, 5) and lin.density() == slt.kept_count(60, 0.4) / 60
    x = torch.randn(2, 4, 9, 9)
    y = conv(x)
    assert y.shape == (2, 6, 5, 5) and conv.coats == 2
    conv.fix_mask()
    assert conv.is_fixed and conv.scores is None and torch.equal(conv(x), y)
    assert "scores" not in dict(conv.named_parameters())
    m = slt.convert(mlp(), sparsity=0.5, scope="global")
    m[0].fix_mask()  # global thresholds: the whole group is fixed together
    assert all(layer.is_fixed for _, layer in slt.masked_layers(m))


def test_config_round_trip_and_include_exclude():
    config = slt.SLTConfig(method="msup", sparsity=[0.6, 0.8], freeze=None, seed=9, exclude=("4",))
    assert slt.SLTConfig.from_dict(config.to_dict()) == config
    assert config.coats == 2 and config.sparsities == (0.6, 0.8)
    m = slt.convert(mlp(), config)
    assert [name for name, _ in slt.masked_layers(m)] == ["0", "2"] and isinstance(m[4], nn.Linear)
    with pytest.raises(ValueError, match="no Linear/Conv2d layer matches"):
        slt.convert(mlp(), include="nothing*")


def test_shared_weight_key_shares_weights_not_scores(tmp_path):
    dense = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False))
    for layer in dense:
        layer.slt_weight_key = "shared"
    m = slt.convert(dense, seed=3)
    assert torch.equal(m[0].signs, m[1].signs) and not torch.equal(m[0].scores, m[1].scores)
    x = torch.randn(2, 8)
    slt.export(m, tmp_path / "t.safetensors")
    plain = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False))
    fresh = slt.load(tmp_path / "t.safetensors", plain)
    assert torch.equal(fresh(x), m(x)) and fresh[0].weight_key == "shared"


def test_a_ticket_with_a_newer_config_version_is_refused_before_the_model_changes(tmp_path, monkeypatch):
    from bqq.slt.convert import SLTConfig

    m = slt.convert(cnn(), method="msup", seed=0)
    path = tmp_path / "t.safetensors"
    monkeypatch.setattr(SLTConfig, "VERSION", 2)  # a ticket written by a future bqq
    slt.export(m, path)
    monkeypatch.setattr(SLTConfig, "VERSION", 1)
    target = cnn()
    before = [type(mod) for mod in target.modules()]
    with pytest.raises(bqq.FormatError, match="version 2 is newer than this bqq reads"):
        slt.load(path, target)
    assert [type(mod) for mod in target.modules()] == before
