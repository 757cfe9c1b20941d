"""The Phi-3 family (``model_type="phi3"``): the Llama adapter with fused ``qkv_proj`` and ``gate_up_proj``.

Structures: ``heads`` (KV groups), ``ffn``, ``hidden``, ``attn_block``, ``mlp_block``, with the Llama family's
hooks and cost terms (:mod:`lightning_prune.adapters.llama`). The package: :mod:`.adapter` (the adapter class and
what it covers), :mod:`.surgery` (the export: Llama's surgery on the fused weights' row blocks), and
:mod:`.modeling_per_layer` (the per-layer classes of the export). Importing it registers the adapter as ``"phi3"``
and Phi-3's per-layer export.
"""

from __future__ import annotations

from lightning_prune.adapters.phi3.adapter import PHI3_FAMILIES, PHI3_KINDS, Phi3Adapter, per_layer_config
from lightning_prune.adapters.registry import register_family

register_family("phi3", Phi3Adapter, PHI3_FAMILIES, __file__, tuple(PHI3_KINDS), per_layer_config)

__all__ = ["PHI3_FAMILIES", "Phi3Adapter"]
