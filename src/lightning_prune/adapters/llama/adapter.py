"""The Llama adapter class: reads the model's config and layout and checks that it can prune it.

What it computes is in the modules beside it: the cost terms (:mod:`.cost_terms`), the mask hooks (:mod:`.hooks`)
and the state-dict surgery of the export (:mod:`.surgery`), all read off the layer table (:mod:`.layout`); the
family's configs in :mod:`.config`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.adapters.base import (
    MaskSource,
    TokenModelAdapter,
    base_layer,
    block_structures,
    output_tensor,
    require_config,
)
from lightning_prune.adapters.llama.config import (
    _REQUIRED_CONFIG,
    LLAMA_FAMILIES,
    SUPPORTED_KINDS,
    _standard_config,
    model_kind,
)
from lightning_prune.adapters.llama.cost_terms import llama_cost_terms
from lightning_prune.adapters.llama.hooks import install_llama_hooks
from lightning_prune.adapters.llama.layout import QK_NORMS, layer_projections, stacked_rows
from lightning_prune.adapters.llama.surgery import build_llama_compact
from lightning_prune.adapters.quantization import plain_config_dict
from lightning_prune.cost import CostTerm
from lightning_prune.errors import UnsupportedModelError
from lightning_prune.ops import set_kept_count
from lightning_prune.structures import StructureSpec


def _submodule(module: nn.Module, path: str) -> nn.Module | None:
    """``module.get_submodule(path)``, or ``None`` where the model has no such module (Llama has no q/k norms)."""
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


class LlamaAdapter(TokenModelAdapter):
    """Adapter for the Llama family's ``*Model``, ``*ForCausalLM``, ``*ForSequenceClassification``,
    ``*ForTokenClassification`` and ``*ForQuestionAnswering`` (:data:`SUPPORTED_KINDS`).

    Raises:
        UnsupportedModelError: another class with a Llama-family config, a config the adapter cannot read, or
            projections that are not ``nn.Linear`` (a quantized model).
    """

    model_types = tuple(LLAMA_FAMILIES)
    #: model_type -> class-name prefix of every model type the adapter covers
    families: dict[str, str] = LLAMA_FAMILIES
    #: head classes (class-name suffixes) -> the linear head reading the final hidden state (``None``: a backbone)
    kinds: dict[str, str | None] = SUPPORTED_KINDS
    #: Fused projections of a layer: ``{path: (the LLAMA_LAYER projections whose rows it stacks, in order)}``. Cost
    #: terms, surgery and checks see a fused family through them as the Llama layout (:mod:`.layout`). None in the
    #: Llama family (Phi-3 has ``qkv_proj`` and ``gate_up_proj``).
    fused_parts: dict[str, tuple[str, ...]] = {}

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return getattr(getattr(model, "config", None), "model_type", None) in cls.families

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        config = model.config
        require_config(config, _REQUIRED_CONFIG, "Llama")
        self.family = config.model_type
        class_prefix = self.families[self.family]
        self.kind = model_kind(model, class_prefix, self.kinds)
        if self.kind is None:
            supported = ", ".join(f"{class_prefix}{kind}" for kind in self.kinds)
            raise UnsupportedModelError(
                f"The {self.name} adapter supports {supported} (model_type={self.family!r}), "
                f"not {type(model).__name__}. Prune one of those (e.g. the backbone, or the causal LM) and put your "
                "own head on the export."
            )
        self.backbone = model.base_model  # LlamaModel (the model itself when given a bare LlamaModel)
        self.prefix = "" if self.backbone is model else f"{model.base_model_prefix}."
        self.layers = self.backbone.layers
        self.num_layers = len(self.layers)
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedModelError(
                f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}."
            )
        self.n_rep = self.num_heads // self.num_kv_heads
        self.head_dim = getattr(config, "head_dim", None) or self.hidden_size // self.num_heads
        #: Qwen3-style RMSNorms over head_dim on q and k (the qk_dims hooks then act at the norms)
        self.qk_norms = all(_submodule(self.layers[0], path) is not None for path in QK_NORMS)
        self.intermediate_size = config.intermediate_size
        self.vocab_size = config.vocab_size
        for path in layer_projections(self.fused_parts):  # each an nn.Linear (or a peft wrapper around one)
            block, name = path.split(".")
            owner = getattr(self.layers[0], block)
            if not isinstance(base_layer(getattr(owner, name, None) or nn.Identity()), nn.Linear):
                raise UnsupportedModelError(
                    f"Expected `{name}` to be an nn.Linear in {type(owner).__name__} (is the model quantized?). "
                    "Pruning a quantized base is not supported: prune in bf16/fp32, then quantize the export."
                )
        for path, (rows, expected) in self.projection_rows().items():
            found = base_layer(self.layers[0].get_submodule(path)).out_features
            if found != rows:
                raise UnsupportedModelError(
                    f"{path} has {found} outputs, expected {expected} = {rows}; the config does not match the weights."
                )
        self.head_name = self.kinds[self.kind]
        self.head = None if self.head_name is None else getattr(model, self.head_name)
        if self.head is not None and not isinstance(base_layer(self.head), nn.Linear):
            raise UnsupportedModelError(
                f"Expected `{self.head_name}` of {type(model).__name__} to be an nn.Linear, got "
                f"{type(base_layer(self.head)).__name__}."
            )
        self.tied = (
            bool(getattr(config, "tie_word_embeddings", False))
            and self.head is not None
            and (base_layer(self.head).weight is base_layer(self.backbone.embed_tokens).weight)
        )

    def projection_rows(self) -> dict[str, tuple[int, str]]:
        """The output rows the config implies for projections of a layer (checked at attach), with how they follow:
        ``q_proj``'s, which the head layout read from the config sets (:func:`~.layout.stacked_rows`)."""
        return {"self_attn.q_proj": stacked_rows(self, ("self_attn.q_proj",))}

    # -- structures and costs ----------------------------------------------------------------------
    def structures(self) -> dict[str, StructureSpec]:
        L = self.num_layers
        return {  # heads are KV groups: a valid GQA config needs whole groups
            **block_structures(L, self.num_kv_heads, self.intermediate_size, self.hidden_size),
            "qk_dims": StructureSpec("qk_dims", L, self.head_dim // 2),  # one unit per RoPE pair
            "v_dims": StructureSpec("v_dims", L, self.head_dim),
        }

    def cost_terms(self, flops_seq_len: int) -> list[CostTerm]:
        return llama_cost_terms(self, flops_seq_len)

    def uniform_masks(
        self, masks: dict[str, torch.Tensor], scores: dict[str, torch.Tensor], fixed: set[str]
    ) -> dict[str, torch.Tensor]:
        """``LlamaConfig`` insists that ``hidden_size`` is a multiple of ``num_attention_heads``: a uniform export
        with a pruned hidden size keeps the nearest such multiple (the best-scored dims), so that it is a standard
        checkpoint ``from_pretrained`` loads. Moves the hidden count by at most half the kept heads."""
        hidden = masks.get("hidden")
        if hidden is None or "hidden" in fixed:
            return masks
        heads = masks.get("heads")
        q = int(heads[0].count_nonzero()) * self.n_rep if heads is not None else self.num_heads
        kept = int(hidden[0].count_nonzero())
        if q == 0 or kept % q == 0 or self._config_accepts(hidden_size=kept, num_attention_heads=q):
            return masks
        wanted = min(max(q, round(kept / q) * q), self.hidden_size // q * q)
        return {**masks, "hidden": set_kept_count(hidden[0], scores["hidden"][0], wanted)[None]}

    def _config_accepts(self, **values: int) -> bool:
        """Whether the family's config class validates with ``values`` (Mistral/Qwen accept any hidden size)."""
        return _standard_config(type(self.model.config), {**plain_config_dict(self.model.config), **values}) is not None

    # -- hooks -------------------------------------------------------------------------------------
    def install_hooks(self, source: MaskSource, structures: set[str]) -> list[tuple[str, nn.Module, RemovableHandle]]:
        return install_llama_hooks(self, source, structures)

    # -- export ------------------------------------------------------------------------------------
    def outputs(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the head computes (:func:`output_tensor`); for a bare backbone the last hidden state, read on the gated
        model at the hidden dims kept by the last :meth:`build_compact` (the pruned ones are 0 there and absent from
        the compact model)."""
        out = output_tensor(model(**inputs))
        return self.at_kept_hidden(model, out) if self.head is None else out

    def build_compact(
        self, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
    ) -> tuple[nn.Module, dict[str, Any]]:
        return build_llama_compact(self, state, masks)
