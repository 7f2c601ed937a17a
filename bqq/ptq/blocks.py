"""The block-by-block calibrated pass, for models made of a stack of repeated blocks.

Transformers (decoder and encoder layers), timm ViTs (``blocks``) and most deep networks run a stack of
blocks of one class in sequence, each reading the previous one's output. The whole-model pass re-runs
the model for every stage of layers (q/k/v, o, gate/up, down, ...), so its forwards grow with depth
squared. Here the inputs of the first block are captured once per calibration batch (positional and
keyword arguments: attention masks, position embeddings or ids; never a KV cache), then each block in
turn is solved stage by stage on its stored inputs and run once to give the next block's inputs:

* ``inputs="quantized"``: the statistics of a stage come from the block (its earlier stages already
  quantized) on the quantized stream, the inputs the quantized blocks before it produce;
* ``inputs="corrected"``: the same, plus the block's FP copy run on the FP stream, for the cross moments
  that let each layer fit the FP model's outputs (only this block's FP copy exists at a time);
* ``inputs="float"``: every statistic from the FP stream on the untouched block.

These are the very tensors the whole-model pass sees, so the results are the same (tested); per batch
the embedding runs once (twice with quantized layers before the stack) and each block its stages plus
one or two times. :func:`find_stack` finds the stack by structure, not by model name, and the capture
checks that the blocks really chain (each block's first input is the previous block's output); a
model that fails either keeps the whole-model pass.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..common import progress_bar
from .hessian import _StopForward, run_model

# Keyword arguments that carry a KV cache: replayed blocks must not read or grow one.
CACHE_KWARGS = ("past_key_values", "past_key_value", "layer_past", "cache")


@dataclass
class BlockInputs:
    """One calibration batch as a block receives it: ``block(*args, **kwargs)``; ``args[0]`` (or the
    keyword ``hidden_states``) is the hidden state. ``token_mask``: the batch's (batch, tokens) padding
    mask, so that padding stays out of H (:mod:`bqq.ptq.hessian`)."""

    args: tuple
    kwargs: dict
    token_mask: torch.Tensor | None = None

    @property
    def hidden(self) -> torch.Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def with_hidden(self, hidden: torch.Tensor) -> BlockInputs:
        """The same batch with another hidden state (the next block's inputs)."""
        if self.args:
            return BlockInputs((hidden, *self.args[1:]), self.kwargs, self.token_mask)
        return BlockInputs((), {**self.kwargs, "hidden_states": hidden}, self.token_mask)

    def to(self, device: torch.device) -> BlockInputs:
        return BlockInputs(_to(self.args, device), _to(self.kwargs, device), self.token_mask)


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def hidden_of(output: Any) -> torch.Tensor:
    """A block's output hidden state: the tensor itself or the first item of a tuple/list."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find the hidden state in a block's {type(output).__name__} output")


@dataclass
class BlockStack:
    """A model's stack: the container's name and its blocks as (full name, module), in order."""

    name: str
    blocks: list[tuple[str, nn.Module]]

    def owner(self, layer: str) -> int | None:
        """The index of the block that holds layer ``layer`` (a full module name), or None."""
        for i, (name, _) in enumerate(self.blocks):
            if layer.startswith(name + "."):
                return i
        return None


def find_stack(model: nn.Module, names: Sequence[str]) -> BlockStack | None:
    """The ``nn.ModuleList`` / ``nn.Sequential`` of two or more children of one class that holds the most
    of the layers ``names`` (full module names), or None when no such container holds any."""
    best: tuple[int, BlockStack] | None = None
    for container_name, container in model.named_modules():
        if not isinstance(container, (nn.ModuleList, nn.Sequential)):
            continue
        children = list(container.named_children())
        if len(children) < 2 or len({type(m) for _, m in children}) != 1:
            continue
        prefix = f"{container_name}." if container_name else ""
        stack = BlockStack(container_name, [(prefix + n, m) for n, m in children])
        held = sum(stack.owner(name) is not None for name in names)
        if held and (best is None or held > best[0]):
            best = (held, stack)
    return best[1] if best else None


def block_forward(device: torch.device | None) -> Callable[[nn.Module, BlockInputs], Any]:
    """Runs a block on its stored inputs (moved to ``device`` first, if given)."""

    def forward(block: nn.Module, inputs: BlockInputs) -> Any:
        if device is not None:
            inputs = inputs.to(device)
        return block(*inputs.args, **inputs.kwargs)

    return forward


@contextlib.contextmanager
def chain_check(stack: BlockStack) -> Iterator[Callable[[], bool]]:
    """Within the block, every forward records how the stack's blocks are called; the yielded function
    then says whether the last forward called each block once, in order, each on the previous block's
    output (as its first argument or ``hidden_states``)."""
    chain: list[list[Any]] = []  # per call: [input hidden, output hidden]
    first = stack.blocks[0][1]

    def enter(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if module is first:
            chain.clear()
        chain.append([args[0] if args else kwargs.get("hidden_states"), None])

    def leave(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        try:
            chain[-1][1] = hidden_of(output)
        except TypeError:
            chain[-1][1] = None

    handles = [m.register_forward_pre_hook(enter, with_kwargs=True) for _, m in stack.blocks]
    handles += [m.register_forward_hook(leave, with_kwargs=True) for _, m in stack.blocks]

    def chained() -> bool:
        if len(chain) != len(stack.blocks):
            return False
        pairs = zip(chain[1:], chain[:-1], strict=True)
        return all(inp is previous[1] and inp is not None for (inp, _), previous in pairs)

    try:
        yield chained
    finally:
        for h in handles:
            h.remove()


def capture_inputs(model: nn.Module, stack: BlockStack, data: Iterable[Any]) -> list[BlockInputs]:
    """The first block's inputs for every calibration batch, in the model's dtype on its device: each
    forward stops there. A KV cache is neither built nor kept."""
    stored: list[BlockInputs] = []
    current: list[Any] = [None]

    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = {k: (None if k in CACHE_KWARGS else False if k == "use_cache" else v) for k, v in kwargs.items()}
        stored.append(BlockInputs(_detach(args), _detach(kwargs), _padding_mask(current[0])))
        raise _StopForward

    handle = stack.blocks[0][1].register_forward_pre_hook(record, with_kwargs=True)
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            for batch in data:
                current[0] = batch
                try:
                    run_model(model, without_cache(model, batch), device)
                except _StopForward:
                    pass
    finally:
        handle.remove()
        model.train(was_training)
    return stored


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detach(v) for v in value)
    if isinstance(value, list):
        return [_detach(v) for v in value]
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value


def _padding_mask(batch: Any) -> torch.Tensor | None:
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    return mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None


def without_cache(model: nn.Module, batch: Any) -> Any:
    """A keyword batch with ``use_cache=False`` when the model takes it (no KV cache is built)."""
    if isinstance(batch, Mapping) and "use_cache" not in batch:
        try:
            takes = "use_cache" in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            takes = False
        if takes:
            return {**batch, "use_cache": False}
    return batch


def advance(block: nn.Module, stream: list[BlockInputs], forward: Callable[[nn.Module, BlockInputs], Any]
            ) -> list[BlockInputs]:
    """The next block's inputs: ``block`` run on each stored batch, its output on the stream's device."""
    was_training = block.training
    block.eval()
    try:
        with torch.no_grad():
            return [inputs.with_hidden(hidden_of(forward(block, inputs)).to(inputs.hidden.device))
                    for inputs in stream]
    finally:
        block.train(was_training)


# solve(stage_plans, root, fp_root, prefix, data, fp_data, forward): statistics of the stage's layers from
# ``root`` (the block, or the model) on ``data`` (and the FP copy on ``fp_data`` for "corrected"), then the
# solve and the swap of the layers; supplied by bqq.ptq.quantize.
SolveStage = Callable[..., None]


def block_pass(stack: BlockStack, stages: list[list], mode: str, fp_stream: list[BlockInputs],
               q_stream: list[BlockInputs], solve: SolveStage, device: torch.device | None = None,
               progress: bool | None = None) -> None:
    """Quantize the layers of ``stages`` (lists of plans in forward order, each stage inside one block of
    ``stack``), block after block.

    ``mode``: ``Calibration.inputs``; ``fp_stream`` / ``q_stream``: the first block's inputs from the FP
    model and from the quantized one (the same list when nothing before the stack is quantized);
    ``device``: where each block runs (None: where it is).
    """
    forward = block_forward(device)
    by_block: dict[int, list[list]] = {}
    for stage in stages:
        by_block.setdefault(stack.owner(stage[0].name), []).append(stage)
    last = max(by_block, default=-1)  # the blocks after it have nothing to solve: they never run
    for index, (prefix, block) in enumerate(progress_bar(stack.blocks[:last + 1], progress=progress,
                                                         desc="blocks", unit="block")):
        home = next((p.device for p in block.parameters()), None)
        if device is not None:
            block.to(device)
        fp_block = copy.deepcopy(block) if mode == "corrected" and index in by_block else None
        block_stages = by_block.get(index, [])
        if mode == "float":  # every statistic from the FP stream: the next inputs before the block changes
            next_fp = advance(block, fp_stream, forward)
            for stage in block_stages:
                solve(stage, block, None, prefix + ".", fp_stream, None, forward)
            fp_stream = q_stream = next_fp
        else:
            for stage in block_stages:
                solve(stage, block, fp_block, prefix + ".", q_stream, fp_stream if fp_block else None, forward)
            next_q = advance(block, q_stream, forward)
            if mode == "corrected":
                fp_stream = advance(fp_block if fp_block is not None else block, fp_stream, forward)
            q_stream = next_q
        del fp_block
        if device is not None and home is not None:
            block.to(home)
