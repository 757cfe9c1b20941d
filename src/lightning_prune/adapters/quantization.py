"""Telling quantized weights from float weights that merely came from a quantized file.

The export slices weight rows and columns and folds LoRA into them, which is exact only for ordinary float tensors.
A ``quantization_config`` on the model's config is not enough to decide: transformers loads GGUF files
(``from_pretrained(..., gguf_file=...)``) by dequantizing every tensor into plain fp32 ``nn.Linear`` /
``nn.Embedding`` weights, yet keeps ``quantization_config={"quant_method": "gguf"}`` and ``is_quantized=True``. So
the decision looks at the modules and parameters themselves, and at the quantization method only to know whether
its loader keeps quantized storage (bitsandbytes, GPTQ, AWQ, torchao, compressed-tensors, fp8, ...) or not.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: quantization methods whose transformers loader dequantizes every weight to an ordinary float tensor
DEQUANTIZED_ON_LOAD = frozenset({"gguf"})

#: packages (or subpackages) whose layers or tensor subclasses hold quantized weights
QUANTIZED_LIBRARIES = frozenset(
    {
        "aqlm",
        "auto_gptq",
        "awq",
        "bitsandbytes",
        "compressed_tensors",
        "eetq",
        "fbgemm_gpu",
        "gptqmodel",
        "hqq",
        "optimum.quanto",
        "quanto",
        "torchao",
        "vptq",
    }
)

#: class names of quantized linear layers, wherever they are defined (peft's bnb LoRA wrappers, transformers'
#: fp8/bitnet integrations, GPTQ/AWQ kernels)
QUANTIZED_LAYER_NAMES = frozenset(
    {
        "AutoBitLinear",
        "BitLinear",
        "CompressedLinear",
        "FP8Linear",
        "HQQLinear",
        "Linear4bit",
        "Linear8bitLt",
        "QLinear",
        "QuantLinear",
        "WQLinear_GEMM",
        "WQLinear_GEMV",
    }
)

#: float dtypes too narrow to be sliced and merged as they are (torch calls them floating point)
_NARROW_FLOAT_NAMES = ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu")
_NARROW_FLOATS = tuple(getattr(torch, n) for n in (*_NARROW_FLOAT_NAMES, "float4_e2m1fn_x2") if hasattr(torch, n))


def quantization_method(model: nn.Module) -> str | None:
    """The ``quant_method`` of a transformers model's ``quantization_config`` (or of its ``hf_quantizer``), lower
    case; ``"unknown"`` for a config without one; ``None`` when the model carries no quantization config."""
    hf = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    config = getattr(hf, "config", None)
    quant = getattr(config, "quantization_config", None) if config is not None else None
    if quant is None and getattr(hf, "hf_quantizer", None) is not None:
        quant = getattr(hf.hf_quantizer, "quantization_config", None)
    if quant is None:
        return "unknown" if getattr(hf, "is_quantized", False) else None
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    if method is None:
        return "unknown"
    return str(getattr(method, "value", method)).lower()  # transformers' QuantizationMethod is a str enum


def _library(cls: type) -> str:
    """The quantization library that defines ``cls`` (an entry of :data:`QUANTIZED_LIBRARIES`), or ``""``."""
    module = getattr(cls, "__module__", "") or ""
    return next((lib for lib in QUANTIZED_LIBRARIES if module == lib or module.startswith(lib + ".")), "")


def find_quantized_weight(model: nn.Module) -> str | None:
    """A description of the first quantized layer or weight of ``model`` (``None`` if every weight is a plain float
    tensor): a layer from a quantization library or with a known quantized class name, an integer or fp8 parameter
    (packed GPTQ/AWQ weights, bnb 8-bit), or a tensor subclass from a quantization library (torchao, bnb
    ``Params4bit``). peft's LoRA parameters are skipped: they are trained in float whatever the base."""
    for name, module in model.named_modules():
        cls = type(module)
        if cls.__name__ in QUANTIZED_LAYER_NAMES or _library(cls):
            return f"layer `{name}` is a {cls.__module__}.{cls.__name__}"
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        if not p.is_floating_point():
            return f"integer weight `{name}`"
        if p.dtype in _NARROW_FLOATS:
            return f"{p.dtype} weight `{name}`"
        for cls in (type(p), type(p.data)):
            if _library(cls):
                return f"weight `{name}` is a {cls.__module__}.{cls.__name__}"
    return None


def plain_config_dict(config: Any) -> dict[str, Any]:
    """``config.to_dict()`` without ``quantization_config``: for the compact model's config, whose weights are
    ordinary float tensors built by the export (a GGUF-loaded base keeps ``quant_method="gguf"`` in its config, and
    ``from_pretrained`` of a folder with it would look for a GGUF file)."""
    values = config.to_dict()
    values.pop("quantization_config", None)
    return values


__all__ = [
    "DEQUANTIZED_ON_LOAD",
    "QUANTIZED_LAYER_NAMES",
    "QUANTIZED_LIBRARIES",
    "find_quantized_weight",
    "plain_config_dict",
    "quantization_method",
]
