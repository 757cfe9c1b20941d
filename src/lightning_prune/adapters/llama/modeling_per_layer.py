"""Per-layer pruned Llama models, written by lightning-prune (https://github.com/lightning-prune).

This file is standalone: it needs only torch and transformers, so a model exported with per-layer
shapes loads with ``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`` on a machine
without lightning-prune. Every layer keeps its own number of attention heads, key/value heads and FFN
channels (``config.layer_shapes``); a layer whose heads or channels were all pruned adds nothing to the
residual stream. A layer may also keep only some dims of every head (``qk_dim`` for queries and keys, whole
rotary pairs listed in ``rope_pairs``; ``v_dim`` for values): its attention then reads the rotary cos/sin of
the kept pairs and keeps the original scaling ``1/sqrt(head_dim)``.
"""

import torch
from torch import nn
from transformers import AutoModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.configuration_llama import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaForCausalLM,
    LlamaForQuestionAnswering,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
    LlamaModel,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from lightning_prune.export.per_layer_shared import (
    _EmptyAttention,
    _EmptyMLP,
    _KeyValueHeadsConfig,
    _layer_cache,
    _per_layer,
    _zip_layer_shapes,
)


class PrunedLlamaConfig(_KeyValueHeadsConfig, LlamaConfig):
    model_type = "lightning_prune_llama"

    # config.layer_shapes is authoritative; num_attention_heads / num_key_value_heads are nominal (1).
    def check_layer_shape(self, i, shape):
        super().check_layer_shape(i, shape)
        pairs = shape.get("rope_pairs")
        if pairs is not None and (
            shape["qk_dim"] != 2 * len(pairs) or any(not 0 <= p < self.head_dim // 2 for p in pairs)
        ):
            raise ValueError(f"layer {i}: qk_dim {shape['qk_dim']} does not match rope_pairs {pairs}")


def _unresized_modules(attn, qk_dim):
    """The modules of ``attn`` that no head count resizes (Qwen3's q_norm/k_norm over head_dim): an attention with
    no heads left keeps them, unused, so the checkpoint and the parameter count are those of the original layout
    (over the kept q/k dims, if pruned)."""
    keep = {}
    for name, child in attn.named_children():
        if name not in ("q_proj", "k_proj", "v_proj", "o_proj") and any(True for _ in child.parameters()):
            if qk_dim is not None and name in ("q_norm", "k_norm"):
                child.weight = nn.Parameter(torch.ones(qk_dim))
            keep[name] = child
    return keep


def _linear_like(old, in_features, out_features):
    return nn.Linear(in_features, out_features, bias=old.bias is not None)


class _HeadDimsLlamaAttention(LlamaAttention):
    """Attention whose query/key heads keep ``qk_dim`` dims (the rotary pairs ``rope_pairs`` of the original
    ``head_dim``: first members, then their partners, so ``rotate_half`` pairs them as before) and whose value
    heads keep ``v_dim`` dims. The scaling stays the original ``1/sqrt(head_dim)``: dropping dims from ``q·k`` is
    what masking them did."""

    def __init__(self, config, layer_idx, heads, kv, rope_pairs, v_dim):
        super().__init__(config, layer_idx)  # nominal one-head projections (config.head_dim is the original)
        d = config.hidden_size
        self.num_heads, self.num_kv_heads, self.num_key_value_groups = heads, kv, heads // kv
        self.rope_pairs = list(rope_pairs)
        self.qk_dim, self.v_dim = 2 * len(self.rope_pairs), v_dim
        self.q_proj = _linear_like(self.q_proj, d, heads * self.qk_dim)
        self.k_proj = _linear_like(self.k_proj, d, kv * self.qk_dim)
        self.v_proj = _linear_like(self.v_proj, d, kv * v_dim)
        self.o_proj = _linear_like(self.o_proj, heads * v_dim, d)
        for name in ("q_norm", "k_norm"):  # Qwen3: the q/k norms run over the kept dims
            if getattr(self, name, None) is not None:
                getattr(self, name).weight = nn.Parameter(torch.ones(self.qk_dim))
        self._rope_index = {}

    def rope_index(self, device):
        """Indices of the kept dims in the rotary cos/sin (``[pairs, pairs + head_dim/2]``), per device."""
        key = str(device)
        if key not in self._rope_index:
            pairs = torch.tensor(self.rope_pairs, dtype=torch.long, device=device)
            self._rope_index[key] = torch.cat([pairs, pairs + self.head_dim // 2])
        return self._rope_index[key]

    def forward(self, hidden_states, position_embeddings, attention_mask=None, **kwargs):
        cache = _layer_cache(kwargs)
        input_shape = hidden_states.shape[:-1]
        query = self.q_proj(hidden_states).view(*input_shape, self.num_heads, self.qk_dim)
        key = self.k_proj(hidden_states).view(*input_shape, self.num_kv_heads, self.qk_dim)
        value = self.v_proj(hidden_states).view(*input_shape, self.num_kv_heads, self.v_dim).transpose(1, 2)
        if getattr(self, "q_norm", None) is not None:
            query, key = self.q_norm(query), self.k_norm(key)
        query, key = query.transpose(1, 2), key.transpose(1, 2)  # (batch, heads, seq, qk_dim)
        cos, sin = position_embeddings
        index = self.rope_index(cos.device)
        query, key = apply_rotary_pos_emb(query, key, cos[..., index], sin[..., index])
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        if self.v_dim == 0:  # every value dim pruned: the block writes only o_proj's bias
            return self.o_proj(hidden_states.new_zeros(*input_shape, 0)), None
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        output, weights = interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            sliding_window=getattr(self, "sliding_window", getattr(self.config, "sliding_window", None)),
            **kwargs,
        )
        output = output.reshape(*input_shape, self.num_heads * self.v_dim).contiguous()
        return self.o_proj(output), weights


def _resize_layers(backbone, config):
    d = config.hidden_size
    for idx, (layer, shape) in enumerate(_zip_layer_shapes(backbone.layers, config)):
        attn, mlp = layer.self_attn, layer.mlp
        heads, kv, ffn = shape["num_attention_heads"], shape["num_key_value_heads"], shape["intermediate_size"]
        hd = attn.head_dim
        qk_dim, v_dim = shape.get("qk_dim", hd), shape.get("v_dim", hd)
        if heads == 0:
            qk = qk_dim if "qk_dim" in shape else None
            bias = shape.get("self_attn_output_bias", attn.o_proj.bias is not None)  # False: its block gate closed
            layer.self_attn = _EmptyAttention(d, hd, idx, bias, _unresized_modules(attn, qk))
        elif qk_dim != hd or v_dim != hd:
            layer.self_attn = _HeadDimsLlamaAttention(config, idx, heads, kv, shape["rope_pairs"], v_dim)
        else:
            attn.q_proj = _linear_like(attn.q_proj, d, heads * hd)
            attn.k_proj = _linear_like(attn.k_proj, d, kv * hd)
            attn.v_proj = _linear_like(attn.v_proj, d, kv * hd)
            attn.o_proj = _linear_like(attn.o_proj, heads * hd, d)
            attn.num_key_value_groups = heads // kv
        if ffn == 0:
            layer.mlp = _EmptyMLP(d, shape.get("mlp_output_bias", mlp.down_proj.bias is not None))
        else:
            mlp.gate_proj = _linear_like(mlp.gate_proj, d, ffn)
            mlp.up_proj = _linear_like(mlp.up_proj, d, ffn)
            mlp.down_proj = _linear_like(mlp.down_proj, ffn, d)
            mlp.intermediate_size = ffn


PrunedLlamaModel = _per_layer(LlamaModel, PrunedLlamaConfig, _resize_layers)

# The sequence / token classification and question answering classes build their backbone with
# ``AutoModel.from_config(config)``: registered here, it is the class above (local code, so transformers neither
# asks to trust remote code nor looks the backbone up in ``auto_map``); they do not resize it again.
AutoModel.register(PrunedLlamaConfig, PrunedLlamaModel, exist_ok=True)

PrunedLlamaForCausalLM = _per_layer(LlamaForCausalLM, PrunedLlamaConfig, _resize_layers)
PrunedLlamaForSequenceClassification = _per_layer(LlamaForSequenceClassification, PrunedLlamaConfig, _resize_layers)
PrunedLlamaForTokenClassification = _per_layer(LlamaForTokenClassification, PrunedLlamaConfig, _resize_layers)
PrunedLlamaForQuestionAnswering = _per_layer(LlamaForQuestionAnswering, PrunedLlamaConfig, _resize_layers)
