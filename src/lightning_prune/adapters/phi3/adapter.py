"""The Phi-3 adapter: the Llama adapter with Phi-3's fused projections.

Phi-3 is a Llama layout (RMSNorms, rotary attention with GQA, a gated SiLU MLP) whose query, key and value
projections are one ``qkv_proj`` and whose gate and up projections are one ``gate_up_proj``. The masks act where
they act in Llama (``o_proj`` and ``down_proj`` inputs and outputs, the RMSNorms' inputs), so the hooks are
Llama's; the cost terms and the surgery see the fused projections as the Llama projections they stack
(:attr:`Phi3Adapter.fused_parts`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_prune.adapters.base import block_structures
from lightning_prune.adapters.llama.adapter import LlamaAdapter
from lightning_prune.adapters.llama.layout import stacked_rows
from lightning_prune.adapters.phi3.surgery import build_phi3_compact
from lightning_prune.export.per_layer import without_export_keys
from lightning_prune.structures import StructureSpec

#: model_type -> class-name prefix in transformers
PHI3_FAMILIES: dict[str, str] = {"phi3": "Phi3"}

#: Head classes transformers has for Phi-3 (no question answering head), with their linear head.
PHI3_KINDS: dict[str, str | None] = {
    "ForCausalLM": "lm_head",
    "ForSequenceClassification": "score",
    "ForTokenClassification": "score",
    "Model": None,
}


def longrope_factors(config: Any) -> bool:
    """Whether ``config``'s rotary embedding has longrope ``short_factor`` / ``long_factor`` lists (Phi-3-mini-128k,
    Phi-3.5-mini, Phi-4-mini), whose length Phi3Config checks against ``hidden_size // num_attention_heads``."""
    rope = getattr(config, "rope_parameters", None) or {}
    return isinstance(rope, dict) and any(rope.get(k) is not None for k in ("short_factor", "long_factor"))


def per_layer_config(config: dict[str, Any], layer_shapes: list[dict[str, Any]]) -> dict[str, Any]:
    """Nominal sizes of the per-layer config (the per-layer shapes override them): the original head counts, which
    pass Phi3Config's longrope check (``hidden_size // num_attention_heads`` is the head dim), and the widest FFN."""
    cfg = without_export_keys(config)
    cfg["intermediate_size"] = max(max(s["intermediate_size"] for s in layer_shapes), 1)
    return cfg


class Phi3Adapter(LlamaAdapter):
    """Adapter for ``Phi3Model``, ``Phi3ForCausalLM``, ``Phi3ForSequenceClassification`` and
    ``Phi3ForTokenClassification``.

    Structures: ``heads`` (KV groups: the query heads of a group and its key and value head, rows of ``qkv_proj``),
    ``ffn`` (a channel is a row of each half of ``gate_up_proj`` and a column of ``down_proj``), ``hidden``,
    ``attn_block`` and ``mlp_block``, as in Llama. Refused at attach (:meth:`refused_structures`): ``qk_dims`` /
    ``v_dims`` (Phi-3's attention reads one ``head_dim`` for queries, keys and values), and ``hidden`` on a model
    with longrope factors (Phi3Config would reject the exported config).

    Raises:
        UnsupportedModelError: another class with a Phi-3 config, or projections that are not ``nn.Linear``.
    """

    model_types = tuple(PHI3_FAMILIES)
    families = PHI3_FAMILIES
    kinds = PHI3_KINDS
    fused_parts = {
        "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    }

    def projection_rows(self) -> dict[str, tuple[int, str]]:
        """Each fused projection holds the rows of the Llama projections it stacks (:attr:`fused_parts`)."""
        return {fused: stacked_rows(self, parts) for fused, parts in self.fused_parts.items()}

    def structures(self) -> dict[str, StructureSpec]:
        refused = self.refused_structures()
        specs = block_structures(self.num_layers, self.num_kv_heads, self.intermediate_size, self.hidden_size)
        return {name: spec for name, spec in specs.items() if name not in refused}

    def refused_structures(self) -> dict[str, str]:
        head_dims = (
            "Phi-3's attention reads one head_dim for queries, keys and values, so no compact Phi-3 holds pruned head "
            "dims. Prune 'heads' (KV groups) instead."
        )
        refused = {"qk_dims": head_dims, "v_dims": head_dims}
        if longrope_factors(self.model.config):
            refused["hidden"] = (
                "with longrope scaling, transformers' Phi3Config checks the length of the rope factors against "
                "hidden_size // num_attention_heads, so no config with a pruned hidden size loads (the rotary "
                "embedding itself reads head_dim). Prune 'heads', 'ffn' and the blocks: their exports keep the "
                "config's hidden size and nominal head count (per-layer classes when heads are pruned)."
            )
        return refused

    def build_compact(
        self, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
    ) -> tuple[nn.Module, dict[str, Any]]:
        return build_phi3_compact(self, state, masks)
