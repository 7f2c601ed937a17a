"""The methods: every compression method is a `QuantizedMatrix` subclass registered by name.

Benchmarks and the model pass swap methods by name (``bqq.compress(w, method="bcq")``). A new method
subclasses :class:`bqq.quantized.QuantizedMatrix` and decorates itself with
:func:`~bqq.methods.registry.register_method`; importing this package registers the built-in ones.
"""

from . import bcq, bqq, gptq, lattice, svd, svdq, uniform, vq  # noqa: F401  (each registers itself)
from .registry import available_methods, bits_meanings, get_method, register_method

__all__ = ["available_methods", "bits_meanings", "get_method", "register_method"]
