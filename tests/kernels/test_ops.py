"""The torch ops ``bqq::linear`` / ``bqq::dequantize`` (BQQ layouts) and ``bqq::plane_linear`` /
``bqq::plane_dequantize`` (bit-plane layouts): opcheck, torch.compile, gradients, backend choice.

Layouts are built here from random packed bits (``bqq_kernels.build_layout``, ``build_plane_layout``),
independent of bqq's model pass.
"""

import pytest
import torch
from torch import nn

import bqq_kernels as kernels
from bqq_kernels import dispatch
from tests.kernels.common import random_layout, random_plane_layout

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
# (row part sizes, column part sizes, stacks): an uneven grid, one group, odd widths
GRIDS = [((16, 14), (9, 12, 5), 2), ((8,), (8,), 1), ((5, 6), (13,), 3)]


LAYOUTS = {"bqq": random_layout, "planes": random_plane_layout}


def op_args(x: torch.Tensor, layout: kernels.PackedLayout, backend: str = "", bias: torch.Tensor | None = None
            ) -> tuple:
    return (x, *layout.tensors, bias, layout.shape[0], backend)


def ops(layout: kernels.PackedLayout):
    """The (linear, dequantize) ops that read ``layout``."""
    family = kernels.ops.family_of(layout)
    return family.linear, family.dequantize


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grid", GRIDS, ids=str)
@pytest.mark.parametrize("family", LAYOUTS)
def test_opcheck(device, grid, family):
    layout = LAYOUTS[family](*grid).to(device)
    linear, dequantize = ops(layout)
    m, n = layout.shape
    gen = torch.Generator().manual_seed(0)
    bias = torch.randn(m, generator=gen).to(device)
    for backend, shape, grad, b in [("", (3, n), False, None), ("", (2, 4, n), True, None),
                                    ("reference", (5, n), True, None), ("", (2, n), True, bias),
                                    ("reference", (1, 3, n), False, bias.half())]:
        x = torch.randn(*shape, generator=gen).to(device).to(torch.float32 if b is None else b.dtype)
        args = op_args(x.requires_grad_(grad), layout, backend, None if b is None else b.clone().requires_grad_(grad))
        torch.library.opcheck(linear, args)
    for dtype in (torch.float32, torch.float64):
        torch.library.opcheck(dequantize, (*layout.tensors, m, n, dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", LAYOUTS)
def test_forward_and_gradient_equal_the_dense_weight(device, family):
    layout = LAYOUTS[family]((16, 14), (9, 12, 5), 2).to(device)
    w = kernels.dequantize_layout(layout)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 7, layout.shape[1], generator=gen).to(device).requires_grad_()
    bias = torch.randn(layout.shape[0], generator=gen).to(device).requires_grad_()
    out = kernels.bqq_linear(x, layout, bias, backend="numba-exact" if device == "cpu" else None)
    torch.testing.assert_close(out, x @ w.T + bias, rtol=1e-5, atol=1e-5)
    if device == "cpu":  # the default: the table kernel at 14 tokens (16-bit tables)
        torch.testing.assert_close(kernels.bqq_linear(x, layout, bias), out, rtol=1e-3, atol=1e-3)
    grad = torch.randn_like(out)
    out.backward(grad)
    torch.testing.assert_close(x.grad, grad @ w, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bias.grad, grad.sum((0, 1)))


def test_meta_tensors_give_the_output_shape():
    layout = random_layout((16, 14), (9, 12, 5), 2).to("meta")
    out = kernels.bqq_linear(torch.empty(4, 1, 26, device="meta"), layout)
    assert out.shape == (4, 1, 30) and out.device.type == "meta"
    assert kernels.dequantize_layout(layout, torch.float64).shape == (30, 26)


def test_backend_override_and_errors(monkeypatch):
    layout = random_layout((8,), (8,), 1)
    x = torch.randn(3, 8)
    calls = []
    numba_fn = dispatch.resolve("cpu", "numba")
    monkeypatch.setitem(dispatch._RESOLVED, ("linear", "cpu", "numba"), lambda *a: calls.append(1) or numba_fn(*a))
    ref = x @ kernels.dequantize_layout(layout).T
    torch.testing.assert_close(kernels.bqq_linear(x, layout, backend="reference"), ref)
    assert calls == []
    torch.testing.assert_close(kernels.bqq_linear(x, layout), ref, rtol=1e-3, atol=1e-3)
    assert calls == [1]
    kernels.set_default_backend("cpu", "reference")
    try:
        kernels.bqq_linear(x, layout)
        assert calls == [1] and kernels.default_backend("cpu") == "reference"
    finally:
        kernels.set_default_backend("cpu", None)
    available = r"\['numba', 'numba-table', 'numba-table-generic', 'numba-exact', 'reference'\]"
    with pytest.raises(ValueError, match=rf"'magic' is not available on 'cpu'; available: {available}"):
        kernels.bqq_linear(x, layout, backend="magic")
    with pytest.raises(ValueError, match="available"):
        kernels.set_default_backend("cpu", "magic")
    with pytest.raises(ValueError, match="float32"):
        torch.ops.bqq.linear(*op_args(x.double(), layout, "numba"))


class BQQLinear(nn.Module):
    """A layer holding a layout as a plain attribute, as bqq's quantized modules do."""

    def __init__(self, layout: kernels.PackedLayout, bias: torch.Tensor):
        super().__init__()
        self.layout = layout
        self.bias = nn.Parameter(bias)

    def forward(self, x):
        return kernels.bqq_linear(x, self.layout, self.bias)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # inside inductor
def test_torch_compile_equals_eager():
    torch.manual_seed(0)
    first, second = random_layout((16, 14), (9, 12, 5), 2), random_layout((5, 6), (13, 17), 3, seed=1)
    third = random_plane_layout((7, 4), (6, 5), 3, seed=2)  # both op families in one graph
    model = nn.Sequential(BQQLinear(first, torch.randn(30)), nn.ReLU(), BQQLinear(second, torch.randn(11)),
                          BQQLinear(third, torch.randn(11)))
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: no graph break around the op
    x = torch.randn(6, 26)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
    x.requires_grad_()  # the compiled backward rebuilds W through bqq::dequantize
    compiled(x).sum().backward()
    grad, x.grad = x.grad, None
    model(x).sum().backward()
    torch.testing.assert_close(grad, x.grad, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", LAYOUTS)
def test_eager_inference_shortcut_equals_the_op(device, family):
    """Without autograd or tracing bqq_linear runs the op's body directly (no dispatcher): same numbers."""
    layout = LAYOUTS[family]((24, 16), (40,), 2).to(device)
    x = torch.randn(5, 40, generator=torch.Generator().manual_seed(3)).to(device)
    with torch.no_grad():
        direct = kernels.bqq_linear(x, layout)
    through_op = ops(layout)[0](*op_args(x, layout))
    assert torch.equal(direct, through_op)


def test_a_default_that_a_family_lacks_leaves_it_on_its_own_default(monkeypatch):
    """set_default_backend names a backend of the BQQ op only: bit-plane layers keep theirs, while asking a
    plane layer for it by name is an error."""
    target = "bqq_kernels.cpu.bqq_matmul:bqq_linear_cpu"
    monkeypatch.setitem(dispatch._REGISTRY[("linear", "cpu")], "numba-copy", target)
    monkeypatch.setitem(dispatch._TRAITS, ("linear", "cpu", "numba-copy"), dispatch.FP32_ONLY)
    planes = random_plane_layout((8,), (8,), 2)
    x = torch.randn(3, 8)
    kernels.set_default_backend("cpu", "numba-copy")
    try:
        assert kernels.default_backend("cpu") == "numba-copy"
        assert kernels.default_backend("cpu", "plane_linear") == "numba"
        torch.testing.assert_close(kernels.bqq_linear(x, planes), x @ kernels.dequantize_layout(planes).T,
                                   rtol=1e-3, atol=1e-3)
        with pytest.raises(ValueError, match=r"'numba-copy' is not available on 'cpu'.*\(op plane_linear\)"):
            kernels.bqq_linear(x, planes, backend="numba-copy")
    finally:
        kernels.set_default_backend("cpu", None)
