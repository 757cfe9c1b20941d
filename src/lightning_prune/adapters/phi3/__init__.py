"""The Phi-3 family (``model_type="phi3"``): the Llama adapter with fused ``qkv_proj`` and ``gate_up_proj``.

Structures: ``heads`` (KV groups), ``ffn``, ``hidden``, ``attn_block``, ``mlp_block``, with the Llama family's
hooks and cost terms (:mod:`lightning_prune.adapters.llama`). The package: :mod:`.adapter` (the adapter class and
what it covers), :mod:`.surgery` (the export: Llama's surgery on the fused weights' row blocks), and
:mod:`.modeling_per_layer` (the per-layer classes of the export). Importing it registers the adapter as ``"phi3"``
and Phi-3's per-layer export.
"""

from __future__ import annotations

from pathlib import Path

from lightning_prune.adapters.phi3.adapter import PHI3_FAMILIES, PHI3_KINDS, Phi3Adapter, per_layer_config
from lightning_prune.adapters.registry import register_adapter
from lightning_prune.export.per_layer import register_per_layer_families

register_per_layer_families(
    PHI3_FAMILIES,
    str(Path(__file__).with_name("modeling_per_layer.py")),
    tuple(PHI3_KINDS),
    per_layer_config,
    template_names=("Phi3", "phi3"),  # the names modeling_per_layer.py is written with
)
register_adapter("phi3")(Phi3Adapter)

__all__ = ["PHI3_FAMILIES", "Phi3Adapter"]
