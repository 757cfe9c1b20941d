"""Per-layer pruned GPT2 models, written by lightning-prune (https://github.com/lightning-prune).

This file is standalone: it needs only torch and transformers, so a model exported with per-layer
shapes loads with ``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`` (or
``AutoModel`` / ``AutoModelForSequenceClassification``) on a machine without lightning-prune.

What differs from the stock GPT2 classes (``config.layer_shapes`` is authoritative):

* every layer keeps its own number of attention heads (each of ``config.attention_head_size`` dims)
  and MLP channels; ``config.n_head`` / ``config.n_inner`` are nominal;
* ``config.n_embd`` may be any size (it need not be a multiple of the head count);
* a layer with no heads (or no MLP channels) left adds only its output bias to the residual stream, or
  nothing when the whole block was pruned.
"""

from torch import nn
from transformers.models.gpt2.configuration_gpt2 import GPT2Config
from transformers.models.gpt2.modeling_gpt2 import (
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPT2Model,
)
from transformers.pytorch_utils import Conv1D

from lightning_prune.export.per_layer_shared import (
    _BiasOnly,
    _cache_placeholder,
    _LayerShapesConfig,
    _NoOutput,
    _per_layer,
    _zip_layer_shapes,
)


class PrunedGPT2Config(_LayerShapesConfig, GPT2Config):
    model_type = "lightning_prune_gpt2"
    # Extra keys: layer_shapes (one dict per layer), attention_head_size.


class _EmptyAttention(nn.Module):
    """Self-attention with no heads left: writes only ``c_proj``'s bias (or nothing).

    It still appends placeholder keys and values, (batch, 1, seq, 1), to a cache: the cache reports its
    sequence length from a layer's keys (an empty tensor reads as length 0), and generation derives the
    position ids from it. Nothing reads them back.
    """

    def __init__(self, embed_dim, bias, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.c_proj = _BiasOnly(embed_dim, bias)

    def forward(self, hidden_states, *args, **kwargs):
        _cache_placeholder(kwargs, hidden_states, self.layer_idx, 1, 1)
        return self.c_proj(hidden_states.new_zeros(*hidden_states.shape[:-1], 0)), None


def _resize_layers(backbone, config):
    d, hd = config.n_embd, config.attention_head_size
    for l, (layer, shape) in enumerate(_zip_layer_shapes(backbone.h, config)):
        heads, ffn = shape["num_attention_heads"], shape["intermediate_size"]
        attn_bias, ffn_bias = bool(shape.get("attention_output_bias", True)), bool(shape.get("ffn_output_bias", True))
        if heads == 0:
            layer.attn = _EmptyAttention(d, attn_bias, l)
        else:
            attn = layer.attn
            # GPT2Attention reads these in forward: q, k, v = c_attn(x).split(split_size); views of head_dim
            attn.embed_dim = d
            attn.num_heads = heads
            attn.head_dim = hd
            attn.split_size = heads * hd
            # __init__ derived the scaling from the nominal head size; recompute it for the real one
            attn.scaling = hd**-0.5 if config.scale_attn_weights else 1.0
            if config.scale_attn_by_inverse_layer_idx:
                attn.scaling /= float(l + 1)
            attn.c_attn = Conv1D(3 * heads * hd, d)
            attn.c_proj = Conv1D(d, heads * hd)  # a kept block always keeps its output bias
        if ffn == 0:
            layer.mlp.c_fc = _NoOutput()
            layer.mlp.c_proj = _BiasOnly(d, ffn_bias)
        else:
            layer.mlp.c_fc = Conv1D(ffn, d)
            layer.mlp.c_proj = Conv1D(d, ffn)


PrunedGPT2Model = _per_layer(GPT2Model, PrunedGPT2Config, _resize_layers)
PrunedGPT2LMHeadModel = _per_layer(GPT2LMHeadModel, PrunedGPT2Config, _resize_layers)
PrunedGPT2ForSequenceClassification = _per_layer(GPT2ForSequenceClassification, PrunedGPT2Config, _resize_layers)
