"""Hugging Face ``transformers`` integration: ``save_pretrained`` / ``from_pretrained`` of bqq-quantized models.

    import bqq                                    # registers quant_method "bqq" with transformers (below)
    bqq.quantize(model, bits=2)                   # any transformers PreTrainedModel
    model.save_pretrained("out")                  # config.json + model.safetensors, complete
    model = AutoModelForCausalLM.from_pretrained("out")   # the quantized model, identical logits
    model = bqq.load_quantized("out")             # the same, the class taken from config.json

What a checkpoint holds (format ``bqq.hf`` version :data:`HF_FORMAT_VERSION`):

- ``config.json``: the model's config with a ``quantization_config`` of ``quant_method`` ``"bqq"``: the bqq
  version that wrote it, the format and its version, per quantized layer its model-config entry (kind,
  shape, method, bits, what ``bqq.quantize`` measured; as in :func:`bqq.save_quantized`) with the manifest
  entry of its packed matrix (``"matrix"``: :meth:`~bqq.quantized.QuantizedMatrix.info`), the modules left
  in floating point and why, ``fp_sha256`` (one SHA-256 per floating-point tensor) and ``packed_sha256``, a
  SHA-256 over that manifest and every packed tensor.
- ``model.safetensors`` (sharded as transformers shards): every floating-point tensor of the model under
  its usual name (embeddings, norms, biases, an untied ``lm_head``; a tied one is stored once), and each
  quantized layer's packed arrays, named ``"<layer>.qweight.<field>"`` (the fields of
  ``docs/format.md``: bit-packed codes and fp32 scalars).

``from_pretrained`` builds the model on the meta device, puts a quantized layer in the place of each
listed module from the packed arrays (checked against the manifest and the checksums first: a truncated,
tampered or mismatched checkpoint raises :class:`~bqq.format.FormatError`, a newer format asks to upgrade
bqq), then transformers loads the floating-point tensors. The original FP weights are never needed.

Registration is lazy and costs ``import bqq`` nothing (:mod:`bqq.hf.registry`); ``import bqq`` never imports
transformers. The modules: :mod:`~bqq.hf.checkpoint` (the checkpoint's tensors and manifest),
:mod:`~bqq.hf.quantizer` (the config and quantizer classes registered with transformers; the only module
that imports transformers at its top, imported at registration), :mod:`~bqq.hf.models` (``save_pretrained``
support, rebuilding and loading models). This package registers the transformers model family with the model
pass (:mod:`bqq.ptq.families`), which never imports it.
"""

from __future__ import annotations

from ..ptq.families import ModelFamily, register_family
from .checkpoint import HF_FORMAT, HF_FORMAT_VERSION, PACKED_INFIX, QUANT_METHOD, packed_state, read_checkpoint
from .models import attach, build_model, from_pretrained, hf_model_info
from .registry import is_hf_model, register, register_with_transformers, require_transformers

__all__ = [
    "HF_FORMAT",
    "HF_FORMAT_VERSION",
    "PACKED_INFIX",
    "QUANT_METHOD",
    "attach",
    "build_model",
    "from_pretrained",
    "hf_model_info",
    "is_hf_model",
    "packed_state",
    "read_checkpoint",
    "register",
    "register_with_transformers",
    "require_transformers",
]


def __getattr__(name: str) -> type:
    """``bqq.hf.BqqConfig`` / ``bqq.hf.BqqHfQuantizer``: the registered classes (registers first)."""
    if name in ("BqqConfig", "BqqHfQuantizer"):
        return register()[name == "BqqHfQuantizer"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


register_family(ModelFamily("hf", describe=hf_model_info, build=build_model, finish=attach,
                            load_directory=from_pretrained))
