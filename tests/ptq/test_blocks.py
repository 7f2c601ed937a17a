"""The block-by-block calibrated pass (bqq.ptq.blocks): the same quantized model as the whole-model pass,
with forwards that grow linearly with depth, on decoder LMs (Llama with GQA and tied embeddings, GPT-2),
a timm ViT and models whose blocks do not chain."""

import copy

import pytest
import torch
from torch import nn

import bqq
from bqq.compat import import_timm, import_transformers
from bqq.ptq.blocks import find_stack

transformers = pytest.importorskip("transformers")


def tiny_llama(layers: int = 3):
    tr = import_transformers()
    torch.manual_seed(0)
    config = tr.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                            max_position_embeddings=64)
    return tr.LlamaForCausalLM(config).eval()


def token_batches(count: int = 3, seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    batches = [{"input_ids": torch.randint(0, 128, (2, 16), generator=g),
                "attention_mask": torch.ones(2, 16, dtype=torch.long)} for _ in range(count)]
    batches[-1]["attention_mask"][1, 11:] = 0  # padding stays out of H in both passes
    return batches


def both_passes(model: nn.Module, x, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """The outputs on ``x`` of ``model`` quantized block by block and with whole-model forwards."""
    outs = []
    for blockwise in (True, False):
        m = copy.deepcopy(model)
        calibration = bqq.Calibration(kwargs.pop("data") if blockwise is False else kwargs["data"],
                                      inputs=kwargs.get("inputs", "corrected"), blockwise=blockwise)
        opts = {k: v for k, v in kwargs.items() if k not in ("data", "inputs")}
        bqq.quantize(m, bits=2, calibration=calibration, progress=False, **opts)
        with torch.no_grad():
            out = m(x)
        outs.append(out.logits if hasattr(out, "logits") else out)
    return outs[0], outs[1]


@pytest.mark.parametrize(("inputs", "method", "opts"), [
    ("corrected", "bqq", {"sweeps": 20}), ("quantized", "gptq", {}), ("float", "auto", {"sweeps": 20}),
])
def test_llama_equals_the_whole_model_pass(inputs, method, opts):
    model = tiny_llama()
    x = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(5))
    blockwise, whole = both_passes(model, x, data=token_batches(), inputs=inputs, method=method, group_size=32,
                                   **opts)
    assert torch.equal(blockwise, whole)


def test_vit_and_gpt2_equal_the_whole_model_pass():
    """Layers outside the stack (a ViT's patch embedding and head) are solved before and after it; GPT-2's
    blocks take their Conv1D projections."""
    timm = import_timm()
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10).eval()
    g = torch.Generator().manual_seed(2)
    images = [torch.randn(2, 3, 32, 32, generator=g) for _ in range(2)]
    a, b = both_passes(vit, torch.randn(1, 3, 32, 32, generator=g), data=images, method="auto", group_size=48,
                       sweeps=10)
    assert torch.equal(a, b)
    tr = import_transformers()
    gpt = tr.GPT2LMHeadModel(tr.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                           bos_token_id=0, eos_token_id=0)).eval()
    a, b = both_passes(gpt, token_batches()[0]["input_ids"], data=token_batches(), inputs="quantized",
                       method="gptq", group_size=32)
    assert torch.equal(a, b)


def test_forwards_grow_linearly_with_depth():
    """Per calibration batch the embedding runs at most twice and each block at most (its stages + 2)
    times, its FP copy likewise; the whole-model pass re-runs every block before each stage."""
    model = tiny_llama(layers=4)
    runs: dict[int, int] = {}
    seen: list[nn.Module] = []  # keeps every counted module alive: a freed FP copy's id could be reused

    def count(module, args):
        if id(module) not in runs:
            seen.append(module)
        runs[id(module)] = runs.get(id(module), 0) + 1  # by object: a block's FP copy counts apart

    embed = model.model.embed_tokens
    # a block runs when its first module does (a hook on the block itself would also count the captures,
    # which stop before the block runs)
    blocks = [layer.input_layernorm for layer in model.model.layers]
    for module in [embed, *blocks]:
        module.register_forward_pre_hook(count)
    batches = token_batches(count=4)
    bqq.quantize(model, bits=2, method="gptq", group_size=32, calibration=bqq.Calibration(batches), progress=False)
    stages = 4  # q/k/v, o, gate/up, down
    assert runs[id(embed)] <= 2 * len(batches)
    for block in blocks:
        assert runs[id(block)] <= (stages + 2) * len(batches)
    copies = [n for key, n in runs.items() if key not in {id(embed), *map(id, blocks)}]
    assert len(copies) == len(blocks) and all(n <= (stages + 2) * len(batches) for n in copies)


class Parallel(nn.Module):
    """Two blocks of one class that both read the input (they do not chain)."""

    def __init__(self):
        super().__init__()
        self.branches = nn.ModuleList([nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
                                       for _ in range(2)])

    def forward(self, x):
        return self.branches[0](x) + self.branches[1](x)


def test_blocks_that_do_not_chain_keep_the_whole_model_pass():
    torch.manual_seed(0)
    model = Parallel().eval()
    assert find_stack(model, ["branches.0.0", "branches.1.2"]).name == "branches"
    g = torch.Generator().manual_seed(3)
    data = [torch.randn(8, 16, generator=g) for _ in range(2)]
    a, b = both_passes(model, torch.randn(2, 16, generator=g), data=data, method="gptq", group_size=16)
    assert torch.equal(a, b)


def test_find_stack():
    assert find_stack(tiny_llama(), ["model.layers.0.self_attn.q_proj"]).name == "model.layers"
    mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    assert find_stack(mlp, ["0", "2"]) is None  # layers are not blocks
    assert find_stack(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), ["0", "1"]) is None


def test_calibration_settings_are_checked():
    with pytest.raises(ValueError, match="blockwise"):
        bqq.Calibration([torch.zeros(1)], blockwise="yes")
    with pytest.raises(RuntimeError):
        bqq.Calibration([torch.zeros(1)], device="nonsense")
    model = tiny_llama(layers=2)
    bqq.quantize(model, bits=2, method="gptq", group_size=32, progress=False,
                 calibration=bqq.Calibration(token_batches(), device="cpu"))


def test_blocks_after_the_last_solved_block_do_not_run():
    """With only the first block's layers included, the later blocks run in the opening forward (one batch,
    for the stage order) and never again."""
    model = tiny_llama(layers=4)
    runs = {i: 0 for i in range(4)}
    for i, layer in enumerate(model.model.layers):
        layer.input_layernorm.register_forward_pre_hook(lambda module, args, i=i: runs.__setitem__(i, runs[i] + 1))
    batches = token_batches(count=4)
    bqq.quantize(model, bits=2, method="gptq", group_size=32, include=["model.layers.0.*"],
                 calibration=bqq.Calibration(batches), progress=False)
    assert runs[0] > len(batches) and runs[3] <= 1
