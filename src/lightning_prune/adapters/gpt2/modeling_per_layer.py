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

import torch
from torch import nn
from transformers.models.gpt2.configuration_gpt2 import GPT2Config
from transformers.models.gpt2.modeling_gpt2 import (
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPT2Model,
)
from transformers.pytorch_utils import Conv1D


class PrunedGPT2Config(GPT2Config):
    model_type = "lightning_prune_gpt2"

    # Extra keys: layer_shapes (one dict per layer), attention_head_size.
    def __init__(self, layer_shapes=None, **kwargs):
        self.layer_shapes = list(layer_shapes or [])
        super().__init__(**kwargs)

    def validate(self):
        super().validate()
        for i, shape in enumerate(getattr(self, "layer_shapes", None) or []):
            if shape["num_attention_heads"] < 0 or shape["intermediate_size"] < 0:
                raise ValueError(f"layer {i}: negative sizes in {shape}")


class _NoOutput(nn.Module):
    """A projection with no output features left: (..., 0)."""

    def forward(self, x):
        return x.new_zeros(*x.shape[:-1], 0)


class _BiasOnly(nn.Module):
    """A projection with no input features left: its output bias (or zeros when the block was pruned)."""

    def __init__(self, out_features, bias):
        super().__init__()
        self.out_features = out_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x):
        out = x.new_zeros(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias


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
        # transformers >= 5.2x passes the cache as ``cache=``, earlier 5.x releases as ``past_key_values=``
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None:
            kv = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
            cache.update(kv, kv, self.layer_idx)
        return self.c_proj(hidden_states.new_zeros(*hidden_states.shape[:-1], 0)), None


def _resize_layers(backbone, config):
    layers = backbone.h
    if len(config.layer_shapes) != len(layers):
        raise ValueError(f"config.layer_shapes has {len(config.layer_shapes)} entries for {len(layers)} layers")
    d, hd = config.n_embd, config.attention_head_size
    for l, (layer, shape) in enumerate(zip(layers, config.layer_shapes)):
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


class PrunedGPT2Model(GPT2Model):
    config_class = PrunedGPT2Config

    def __init__(self, config):
        super().__init__(config)
        _resize_layers(self, config)


class PrunedGPT2LMHeadModel(GPT2LMHeadModel):
    config_class = PrunedGPT2Config

    def __init__(self, config):
        super().__init__(config)
        _resize_layers(self.transformer, config)


class PrunedGPT2ForSequenceClassification(GPT2ForSequenceClassification):
    config_class = PrunedGPT2Config

    def __init__(self, config):
        super().__init__(config)
        _resize_layers(self.transformer, config)
