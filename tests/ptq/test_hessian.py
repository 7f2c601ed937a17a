"""bqq.ptq.hessian: H = Σ x xᵀ and the cross moments gathered by hooks over calibration data."""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from bqq.ptq.hessian import collect_cross_moments, collect_hessians, input_stages
from tests.helpers import tiny


def test_hessian_of_a_linear_skips_padding_tokens():
    torch.manual_seed(0)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(20, 6)
            self.lin = nn.Linear(6, 4)

        def forward(self, input_ids, attention_mask):
            return self.lin(self.embed(input_ids))

    model = Model()
    batches = [{"input_ids": torch.randint(0, 20, (3, 5)), "attention_mask": torch.tensor([[1] * 5, [1] * 3 + [0] * 2,
                                                                                          [1] * 1 + [0] * 4])}
               for _ in range(2)]
    (h, count), = collect_hessians(model, ["lin"], batches).values()
    rows = torch.cat([model.embed(b["input_ids"])[b["attention_mask"].bool()] for b in batches]).double()
    assert count == rows.shape[0] == 2 * 9
    torch.testing.assert_close(h, rows.T @ rows, rtol=1e-5, atol=1e-5)


def test_hessian_of_a_conv_is_over_its_patches():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel_size=3, stride=2, padding=1)
    model = nn.Sequential(conv)
    data = [torch.randn(2, 2, 7, 7) for _ in range(3)]
    (h, count), = collect_hessians(model, ["0"], data).values()
    direct = torch.zeros(18, 18, dtype=torch.float64)
    for x in data:  # every patch the kernel multiplies, read out directly
        xp = F.pad(x, (1, 1, 1, 1)).double()
        for i in range(0, 7, 2):
            for j in range(0, 7, 2):
                patch = xp[:, :, i:i + 3, j:j + 3].reshape(2, -1)  # (C, kh, kw) order, as the weight's rows
                direct += patch.T @ patch
    assert count == 3 * 2 * 16
    torch.testing.assert_close(h, direct, rtol=1e-5, atol=1e-5)
    # And H really is the output error's weight: Σ‖(ΔW) x‖² = tr(ΔW H ΔWᵀ).
    delta = torch.randn(3, 18, dtype=torch.float64)
    out = sum(((F.conv2d(x.double(), delta.reshape(3, 2, 3, 3), stride=2, padding=1)) ** 2).sum() for x in data)
    torch.testing.assert_close(out, torch.trace(delta @ h @ delta.T), rtol=1e-5, atol=1e-5)


def test_input_stages_group_layers_that_read_one_tensor():
    model = tiny()
    stages = input_stages(model, [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))],
                          torch.randn(2, 3, 8, 8))
    assert stages[:4] == [["patch"], ["blocks.0.qkv"], ["blocks.0.proj"], ["blocks.0.fc1"]]
    assert stages[-1] == ["head"] and sum(len(s) for s in stages) == 10


class _TwoHeads(nn.Module):
    """Two linears on one input (q and k), a third on another."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.out = nn.Linear(6, 4), nn.Linear(6, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.out(self.q(x) + self.k(x))


def test_layers_reading_one_tensor_share_one_sum_equal_to_their_own():
    torch.manual_seed(0)
    model, data = _TwoHeads(), [torch.randn(5, 6) for _ in range(3)]
    stats = collect_hessians(model, ["q", "k", "out"], data)
    assert stats["q"][0] is stats["k"][0] and stats["q"][0] is not stats["out"][0]
    alone = collect_hessians(model, ["k"], data)["k"]
    assert torch.equal(stats["k"][0], alone[0]) and stats["k"][1] == alone[1] == 15
    moments = collect_cross_moments(model, copy.deepcopy(model), ["q", "k"], data)
    assert moments["q"][1] is moments["k"][1] and torch.equal(moments["k"][0], alone[0])


def test_cross_moments_pair_the_float_and_the_quantized_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    reference = copy.deepcopy(model)
    with torch.no_grad():
        model[0].weight.add_(0.3 * torch.randn(8, 6))  # the "quantized" first layer
    data = [torch.randn(5, 6) for _ in range(3)]
    (h, cross, count), = collect_cross_moments(model, reference, ["2"], data).values()
    x = torch.cat([torch.relu(reference[0](b)) for b in data]).double().detach()
    x_q = torch.cat([torch.relu(model[0](b)) for b in data]).double().detach()
    assert count == 15
    torch.testing.assert_close(h, x_q.T @ x_q)
    torch.testing.assert_close(cross, x.T @ x_q)
    # Before anything is quantized both sides agree: C equals H (and the corrected target is W itself).
    _, same_cross, _ = collect_cross_moments(reference, copy.deepcopy(reference), ["2"], data)["2"]
    torch.testing.assert_close(same_cross, collect_hessians(reference, ["2"], data)["2"][0])
