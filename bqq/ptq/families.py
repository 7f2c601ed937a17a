"""Model families the model pass serves without importing them (Hugging Face ``transformers``).

``bqq.ptq`` never imports an integration; an integration registers a :class:`ModelFamily` here when it is
imported (``bqq.hf`` is, by ``import bqq``), and the pass calls it: after quantizing or loading a model,
when saving (what rebuilds the architecture) and when loading without a model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class ModelFamily:
    """How the pass handles the models of one library.

    name: the key under which a saved model config records :attr:`describe`'s answer.
    describe: model -> a JSON-able record that rebuilds its architecture, or None for other models.
    build: (record, path) -> a freshly built model of that architecture (the skeleton a load fills).
    finish: called with every model the pass quantized or loaded (e.g. to make ``save_pretrained`` work).
    load_directory: path -> the model of a checkpoint directory, or None if the family has no such format.
    """

    name: str
    describe: Callable[[nn.Module], dict[str, Any] | None]
    build: Callable[[dict[str, Any], Any], nn.Module]
    finish: Callable[[nn.Module], Any]
    load_directory: Callable[[str | os.PathLike], nn.Module] | None = None


FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> None:
    """Add (or replace) a family; a reloaded integration registers again."""
    FAMILIES[family.name] = family


def describe(model: nn.Module) -> dict[str, dict[str, Any]]:
    """family name -> record, for every family that knows ``model``."""
    records = {name: family.describe(model) for name, family in FAMILIES.items()}
    return {name: record for name, record in records.items() if record is not None}


def finish(model: nn.Module) -> None:
    for family in FAMILIES.values():
        family.finish(model)


def build(config: dict[str, Any], path: Any) -> nn.Module | None:
    """A skeleton from the first family record in a saved model ``config``; None if it holds none."""
    for name, family in FAMILIES.items():
        if isinstance(config.get(name), dict):
            return family.build(config[name], path)
    return None


def load_directory(path: str | os.PathLike) -> nn.Module:
    """The model of checkpoint directory ``path`` (``save_pretrained``'s)."""
    loaders = [f.load_directory for f in FAMILIES.values() if f.load_directory is not None]
    if not loaders:
        raise TypeError(f"{path} is a directory, and no integration that loads checkpoint directories is "
                        "registered (bqq.hf needs transformers)")
    return loaders[0](path)
