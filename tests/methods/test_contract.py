"""The contract every registered method keeps (parametrized over ``bqq.available_methods()``, plus the option
variants the matrix benchmark uses): compress -> dequantize, bit accounting, the file round trip, grouped
compress, extend where a method has it, and its inference kernel against the dense reference where it has one.

A new method fails ``test_every_registered_method_has_a_spec`` until it gets a :class:`Spec` below; checks
that belong to one method live in tests/methods/test_<method>.py."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import nn

import bqq
import bqq_kernels as kernels
from bqq.grouping import GroupGrid
from bqq.methods import bits_meanings, get_method
from bqq.methods.svdq import rank_for_budget
from bqq.methods.vq import centroids_for_budget
from bqq.ptq import QuantizedConv2d, QuantizedLinear, quantized_layers
from bqq.quantized import QuantizedMatrix
from tests.helpers import assert_same, gaussian, mse, rel_err, tiny


def _bqq_bits(bits, m, n, opts):
    rank = round(m * n / (m + n))  # rank_scale 1
    return bits * rank * (m + n) + 32 * (3 * bits + 1)  # binaries, then 3 scalars per stack and one offset


def _uq_bits(bits, m, n, opts):
    return bits * m * n + 64  # codes, a zero point and a step


def _bcq_bits(bits, m, n, opts):
    return bits * m * n + 32 * bits  # sign planes and one alpha per plane


def _svd_bits(bits, m, n, opts):
    return 32 * int(bits * m * n // (32 * (m + n))) * (m + n)


def _svdq_bits(bits, m, n, opts):
    fb = opts.get("factor_bits", 8)
    return fb * rank_for_budget(bits, (m, n), fb) * (m + n) + 128


def _vq_bits(bits, m, n, opts):
    cb = opts.get("centroid_bits", 32)
    k = centroids_for_budget(bits, (m, n), cb)
    return k * n * cb + (64 if cb != 32 else 0) + m * math.ceil(math.log2(k))


def _lvq_bits(bits, m, n, opts):
    return bits * (math.ceil(m * n / 8) * (8 + opts.get("scale_bits", 1)) + 64)


@dataclass(frozen=True)
class Spec:
    group_bits: Callable[[float, int, int, dict], int]  # the documented bit count of one (m, n) group
    band: tuple[float, float]  # MSE at `band_bits` on a standardized 128x128 Gaussian (measured)
    band_bits: float = 2
    fast: dict = field(default_factory=dict)  # solver settings that keep the tests quick
    variants: dict = field(default_factory=dict)  # option variant id -> (options, its band)
    budget: bool = False  # total bits never exceed bits * weights
    kernel: bool = False  # QuantizedMatrix.kernel_layout() is a packed layout for bqq_kernels.bqq_linear
    extend: bool = False  # QuantizedMatrix.extend(extra_bits) adds stacks to a compressed matrix
    small_bits: float = 2  # bits for the small groups (a dozen rows and columns) of the tests below
    model_bits: float | None = None  # bits for the layers of tests.helpers.tiny (None: small_bits)
    falls_groups: int | None = 48  # group_size of test_error_falls_with_bits (None: one group)

    def bits(self, b: float) -> float:
        """The `bits` argument for a nominal width b: truncated SVD needs its budget in 32-bit factors
        (8b - 0.5: ranks 4, 9, 18 on the 44x34 and 43x33 groups below at b = 1, 2, 4)."""
        return 8 * b - 0.5 if self.group_bits is _svd_bits else b


SPECS = {
    "bqq": Spec(_bqq_bits, (0.10, 0.13), fast={"sweeps": 40}, kernel=True, extend=True),
    "uq": Spec(_uq_bits, (0.115, 0.125), kernel=True),  # uniform / Lloyd-Max at 2 bits: 0.119 / 0.118
    "gptq": Spec(_uq_bits, (0.115, 0.125), kernel=True),  # without H: round to nearest on UQ's grid
    "bcq": Spec(_bcq_bits, (0.115, 0.14), kernel=True),
    # Rank 4 of a 128x128 Gaussian keeps ~4·(2√128)²/128² ≈ 1/8 of the energy.
    "svd": Spec(_svd_bits, (0.85, 0.92), budget=True, small_bits=12, falls_groups=None),  # 1 bit in 48x48: rank 0
    "svdq": Spec(_svdq_bits, (0.60, 0.69), budget=True, small_bits=6, falls_groups=None,
                 variants={"factor_bits4": ({"factor_bits": 4}, (0.36, 0.44))}),
    "vq": Spec(_vq_bits, (0.85, 0.95), budget=True, small_bits=4, model_bits=8, falls_groups=None,  # head 5x24: 6.4
               variants={"centroid_bits4": ({"centroid_bits": 4}, (0.40, 0.50)),
                         "centroid_bits8": ({"centroid_bits": 8}, (0.65, 0.75))}),
    "lvq": Spec(_lvq_bits, (0.07, 0.10), small_bits=1, falls_groups=None,
                variants={"scale_bits2": ({"scale_bits": 2}, (0.05, 0.09))}),
}

METHODS = bqq.available_methods()
# (method, options, band): each method with its defaults, then its variants
CASES = [pytest.param(m, {}, SPECS[m].band if m in SPECS else None, id=m) for m in METHODS] + [
    pytest.param(m, opts, band, id=f"{m}-{vid}")
    for m in METHODS if m in SPECS for vid, (opts, band) in SPECS[m].variants.items()]


def spec(method: str) -> Spec:
    assert method in SPECS, f"method {method!r} has no Spec in tests/methods/test_contract.py"
    return SPECS[method]


def compress(method: str, w, bits: float, opts: dict | None = None, **kwargs) -> QuantizedMatrix:
    return bqq.compress(w, bits=bits, method=method, **{**spec(method).fast, **(opts or {})}, **kwargs)


# --- the registry ----------------------------------------------------------------------------------

def test_every_registered_method_has_a_spec():
    assert set(SPECS) == set(METHODS)
    assert {"bqq", "uq", "bcq", "svd", "gptq", "vq", "lvq", "svdq"} <= set(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_config_is_versioned_and_bits_have_a_meaning(method):
    cls = get_method(method)
    assert cls.method == method
    assert cls.config_class.VERSION >= 1
    assert bits_meanings()[method]
    q = compress(method, gaussian((30, 44)), spec(method).small_bits)
    info = q.info()
    assert info["method"] == method
    assert info["config_version"] == cls.config_class.VERSION
    type(q).from_fields(json.loads(json.dumps(info)), q.grid, q.fields())  # as read back from a file
    info["config_version"] = 99
    with pytest.raises(ValueError, match="version 99 is newer than this bqq reads"):
        type(q).from_fields(info, q.grid, q.fields())


# --- compress -> dequantize ------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, torch.float32, torch.float64, torch.bfloat16,
                                   torch.float16], ids=str)
def test_dequantize_keeps_shape_and_dtype(method, dtype):
    w = gaussian((40, 56))
    x = torch.from_numpy(w).to(dtype) if isinstance(dtype, torch.dtype) else w.astype(dtype)
    q = compress(method, x, spec(method).bits(3), group_size=(24, 32))
    assert q.shape == (40, 56)
    assert q.method == method
    assert len(q.grid) == 2 * 2
    out = q.dequantize()
    assert isinstance(out, torch.Tensor)
    assert out.shape == (40, 56)
    assert out.dtype == {np.float32: torch.float32, np.float64: torch.float64}.get(dtype, dtype)
    assert torch.isfinite(out).all()
    assert q.dequantize(torch.float64).dtype == torch.float64
    assert q.dequantize_group(0).dtype == np.float64
    assert q.dequantize_group(0).shape == q.grid.group_shapes()[0]
    assert rel_err(out.float(), torch.from_numpy(w).float()) < 1.0  # not worse than zeros


@pytest.mark.parametrize(("method", "opts", "band"), CASES)
def test_error_sits_in_the_measured_band(method, opts, band):
    """Errors at the band's width on a standardized 128x128 Gaussian sit where the method's rate allows."""
    lo, hi = band
    w = gaussian((128, 128))
    assert lo < mse(compress(method, w, spec(method).band_bits, opts), w) < hi


@pytest.mark.parametrize(("method", "opts", "band"), CASES)
def test_error_falls_with_bits(method, opts, band):
    w = gaussian((96, 80), seed=2)
    errors = [mse(compress(method, w, b, opts, group_size=spec(method).falls_groups), w) for b in (1, 2, 3, 4)]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors


# --- bit accounting --------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "opts", "band"), CASES)
@pytest.mark.parametrize("b", [1, 2, 4])
def test_bits_follow_the_documented_formula(method, opts, band, b):
    s = spec(method)
    bits = s.bits(b)
    w = gaussian((130, 100))
    q = compress(method, w, bits, opts, group_size=(64, 48))
    shapes = GroupGrid.build((130, 100), (64, 48)).group_shapes()
    expected = sum(s.group_bits(bits, m, n, opts) for m, n in shapes)
    assert q.total_bits == expected
    assert q.total_bits == sum(q.group_bits(i) for i in range(len(q.grid)))
    assert q.bits_per_weight == expected / (130 * 100)
    assert q.total_bits <= 8 * q.nbytes  # every counted bit is stored (packing only adds padding)
    assert q.nbytes == sum(arr.nbytes for arr in q.fields().values())
    if s.budget:  # budget methods never exceed the budget
        assert q.total_bits <= bits * 130 * 100


# --- files -----------------------------------------------------------------------------------------

ROUND_TRIPS = [((64, 64), None, 2), ((130, 100), (64, 48), 3), ((37, 29), (16, 12), None)]  # None: small_bits


@pytest.mark.parametrize(("method", "opts", "band"), CASES)
@pytest.mark.parametrize(("shape", "group_size", "b"), ROUND_TRIPS, ids=str)
def test_save_load_round_trip_is_bit_identical(tmp_path, method, opts, band, shape, group_size, b):
    bits = spec(method).small_bits if b is None else spec(method).bits(b)
    q = compress(method, torch.from_numpy(gaussian(shape)).float(), bits, opts, group_size=group_size)
    path = tmp_path / "q.safetensors"
    bqq.save(q, path)
    loaded = bqq.load(path)
    assert type(loaded) is type(q)
    assert loaded.method == method
    assert loaded.shape == q.shape
    assert loaded.bits == q.bits
    assert loaded.dtype == q.dtype
    assert loaded.info() == q.info()
    assert loaded.grid.row_sizes == q.grid.row_sizes and loaded.grid.col_sizes == q.grid.col_sizes
    assert loaded.total_bits == q.total_bits
    assert loaded.bits_per_weight == q.bits_per_weight
    assert loaded.nbytes == q.nbytes
    assert_same(q, loaded)
    assert loaded.dequantize().dtype == torch.float32
    bqq.save(loaded, tmp_path / "again.safetensors")  # a loaded matrix saves to the same content
    assert_same(q, bqq.load(tmp_path / "again.safetensors"))


def test_one_file_holds_every_method_and_its_variants(tmp_path):
    w = gaussian((48, 40))
    objs = {f"{method}{i}": compress(method, w, spec(method).bits(3), opts, group_size=32)
            for i, (method, opts, _) in enumerate(c.values for c in CASES)}
    assert len(objs) == len(CASES)
    bqq.save(objs, tmp_path / "all.safetensors", metadata={"model": "toy"})
    loaded = bqq.load(tmp_path / "all.safetensors")
    assert set(loaded) == set(objs)
    for name, q in objs.items():
        assert type(loaded[name]) is type(q)
        assert_same(q, loaded[name])
    assert bqq.io.read_metadata(tmp_path / "all.safetensors") == {"model": "toy"}


@pytest.mark.parametrize(("method", "opts", "band"), CASES)
def test_a_flipped_byte_fails_the_checksum(tmp_path, method, opts, band):
    q = compress(method, gaussian((130, 100)), spec(method).bits(2), opts, group_size=(64, 48))
    path = tmp_path / "q.safetensors"
    bqq.save(q, path)
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    # the largest stored array (the codes, signs, binaries, roots or factors of a group)
    start, end = max((v["data_offsets"] for k, v in header.items() if k != "__metadata__"),
                     key=lambda o: o[1] - o[0])
    assert end > start
    data[8 + header_len + start] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(bqq.FormatError, match="checksum"):
        bqq.load(path)


@pytest.mark.parametrize("method", METHODS)
def test_quantized_model_round_trips_exactly(tmp_path, method):
    """A model whose layers all use the method: save_quantized / load_quantized into fresh weights."""
    images = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    bits = spec(method).model_bits or spec(method).small_bits
    q = bqq.quantize(tiny(), bits=bits, method=method, progress=False, **spec(method).fast)
    assert {layer.method for _, layer in quantized_layers(q)} == {method}
    with torch.no_grad():
        out = q(images)
    config_path = bqq.save_quantized(q, tmp_path / "model.safetensors", model_name="tiny")
    assert config_path.exists() and '"model_name": "tiny"' in config_path.read_text()
    fresh = tiny(seed=123)  # different random weights: everything must come from the file
    restored = bqq.load_quantized(tmp_path / "model.safetensors", fresh)
    with torch.no_grad():
        assert torch.equal(restored(images), out)
    assert isinstance(restored.patch, QuantizedConv2d)
    for name, layer in quantized_layers(restored):
        assert_same(layer.qweight, dict(quantized_layers(q))[name].qweight)


# --- determinism and groups ------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "opts", "band"), CASES)
def test_same_seed_same_bits(method, opts, band):
    w = gaussian((130, 100))
    bits = spec(method).bits(3)
    assert_same(compress(method, w, bits, opts, group_size=(64, 48), seed=7),
                compress(method, w, bits, opts, group_size=(64, 48), seed=7))


@pytest.mark.parametrize(("method", "opts", "band"), CASES)
def test_groups_solved_one_by_one_assemble_to_compress(method, opts, band):
    """What the model pass does (one job per group, first_group = its index) equals compress, bit for bit."""
    w = np.random.default_rng(0).standard_normal((30, 44)).astype(np.float32)
    options = {**spec(method).fast, **opts}
    bits = spec(method).small_bits
    whole = bqq.compress(w, bits, method=method, group_size=(16, 20), seed=7, **options)
    assert len(whole.grid) == 2 * 3  # balanced: rows 15, 15; columns 15, 15, 14
    cls, config = bqq.api.method_config(method, bits, options)
    assert cls is type(whole)
    parts = [bqq.api.solve(cls, np.ascontiguousarray(w[rs, cs], np.float64),
                           GroupGrid.build((rs.stop - rs.start, cs.stop - cs.start), (99, 99)), bits, 7,
                           config, progress=False, first_group=g)
             for g, (_, _, rs, cs) in enumerate(whole.grid.blocks())]
    assembled = cls.from_groups(whole.grid, parts)
    assert assembled.fields().keys() == whole.fields().keys()
    for key, arr in whole.fields().items():
        assert np.array_equal(assembled.fields()[key], arr), key
    assert torch.equal(assembled.dequantize(torch.float64), whole.dequantize(torch.float64))


@pytest.mark.parametrize("method", METHODS)
def test_extend_adds_the_stacks_compress_would_have(method):
    w = gaussian((48, 40), seed=3)
    q = compress(method, w, 1 if spec(method).extend else spec(method).small_bits, group_size=(24, 40), seed=5)
    if not spec(method).extend:
        assert not hasattr(q, "extend")
        return
    full = compress(method, w, 3, group_size=(24, 40), seed=5)
    before = mse(q, w)
    step = q.extend(2)
    assert step.bits == 3
    assert_same(full, step)
    assert mse(step, w) < before


# --- inference -------------------------------------------------------------------------------------

EXACT_BACKENDS = {kernels.BQQLayout: ("numba-exact",), kernels.PlaneLayout: ("numba-exact", "numba-rebuild")}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("shape", "group_size"), [((70, 45), (32, 20)), ((9, 7), None)], ids=str)
def test_kernel_equals_the_dense_reference(method, shape, group_size):
    q = compress(method, gaussian(shape).astype(np.float32), spec(method).small_bits, group_size=group_size)
    layout = q.kernel_layout()
    if not spec(method).kernel:
        assert layout is None
        return
    assert type(layout) in EXACT_BACKENDS
    w = q.dequantize(torch.float64)
    torch.testing.assert_close(kernels.dequantize_layout(layout).double(), w, rtol=0, atol=1e-5)
    gen = torch.Generator().manual_seed(0)
    for token_shape in [(1, shape[1]), (5, shape[1]), (2, 19, shape[1])]:
        x = torch.randn(*token_shape, generator=gen)
        ref = x.double() @ w.T
        for backend in (*EXACT_BACKENDS[type(layout)], "reference"):
            out = kernels.bqq_linear(x, layout, backend=backend)
            assert out.shape == (*token_shape[:-1], shape[0]) and out.dtype == torch.float32
            assert rel_err(out, ref) < 1e-5, (backend, token_shape)
        assert rel_err(kernels.bqq_linear(x, layout), ref) < 5e-4, token_shape  # 16-bit tables at few tokens


@pytest.mark.parametrize("method", METHODS)
def test_quantized_layers_run_the_kernel_when_the_method_has_one(monkeypatch, method):
    """Layers of a method with a kernel never rebuild their weight in a forward (BQQ factors or bit planes,
    :mod:`kernels.layout`); the others rebuild it and compute the same as the reference."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, dilation=1), nn.Flatten(1),
                          nn.Linear(8 * 4 * 4, 10)).eval()
    bqq.quantize(model, bits=spec(method).small_bits, method=method, group_size=32,
                 progress=False, **spec(method).fast)
    assert isinstance(model[0], QuantizedConv2d) and isinstance(model[2], QuantizedLinear)
    assert model[2].method == method
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.backend = "reference"
        ref = model(x)
        for layer in (model[0], model[2]):
            layer.backend = None
        if spec(method).kernel:
            def no_dense(*args, **kwargs):
                raise AssertionError("the fast path must not rebuild the dense weight")

            monkeypatch.setattr(QuantizedMatrix, "dequantize", no_dense)
        out = model(x)
    assert model[0].uses_kernel() == model[2].uses_kernel() == spec(method).kernel
    assert kernels.default_backend("cpu") == "numba"
    assert rel_err(out, ref) < 5e-4
