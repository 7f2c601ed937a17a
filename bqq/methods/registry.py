"""The registry of compression methods by name (see :mod:`bqq.methods`)."""

from __future__ import annotations

from ..quantized import QuantizedMatrix

_METHODS: dict[str, type[QuantizedMatrix]] = {}


def register_method(name: str):
    """Class decorator: make ``cls`` available as ``bqq.compress(..., method=name)``."""

    def decorate(cls: type[QuantizedMatrix]) -> type[QuantizedMatrix]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_METHODS[name].__name__}")
        cls.method = name
        _METHODS[name] = cls
        return cls

    return decorate


def get_method(name: str) -> type[QuantizedMatrix]:
    """The class registered under ``name``; ValueError listing the known names otherwise."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {available_methods()}") from None


def available_methods() -> list[str]:
    return sorted(_METHODS)


def bits_meanings() -> dict[str, str]:
    """What ``bits`` means for each registered method (the one place that says it; CLI and ``bqq info``
    print it): a stack count for BQQ, a code width for UQ/BCQ, a budget in bits per weight for
    SVD/SVDQ/VQ, a stage count for LVQ."""
    return {name: cls.bits_meaning for name, cls in sorted(_METHODS.items())}
